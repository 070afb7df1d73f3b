//! Push an OCI image layout to a registry, or pull an image into a
//! directory, with the client library. Used by bench/registry to time the
//! library itself.
//!
//! ```text
//! transfer push <layout-dir> <tag-in-layout> <reference>
//! transfer pull <reference> <dir>
//! ```

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use vessel_registry::client::{
    Client, ClientConfig, CredentialStore, FsStore, NoProgress, PlatformSpec, PushImage, Reference,
};
use vessel_registry::oci::Manifest;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let client = Client::new(
        ClientConfig::default(),
        CredentialStore::from_docker_config(None)?,
    )?;
    match args.first().map(String::as_str) {
        Some("push") if args.len() == 4 => {
            let dir = PathBuf::from(&args[1]);
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
            let entry = index["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == args[2].as_str())
                .with_context(|| format!("tag {} not in {}", args[2], dir.display()))?;
            let digest: vessel_registry::Digest =
                entry["digest"].as_str().context("digest")?.parse()?;
            let store = FsStore::open(&dir)?;
            let bytes = Bytes::from(std::fs::read(store.blob_path(&digest))?);
            let media_type = entry["mediaType"].as_str().unwrap_or_default().to_string();
            let (m, media_type) = Manifest::parse(&bytes, &media_type)?;
            let image = PushImage::Image {
                manifest: bytes,
                media_type,
                blobs: m.blob_refs().cloned().collect(),
            };
            let r = Reference::parse(&args[3])?;
            let res = client.push(&r, &image, &store, &NoProgress).await?;
            println!("{}", res.digest);
        }
        Some("pull") if args.len() == 3 => {
            let r = Reference::parse(&args[1])?;
            let store = FsStore::open(&args[2])?;
            let res = client
                .pull(&r, &PlatformSpec::host(), &store, &NoProgress)
                .await?;
            println!("{}", res.digest);
        }
        _ => bail!(
            "usage: transfer push <layout-dir> <tag> <reference> | transfer pull <reference> <dir>"
        ),
    }
    Ok(())
}
