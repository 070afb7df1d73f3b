//! Pull: resolve a reference to a platform manifest, then fetch its config
//! and layers into a [`BlobSink`] in parallel, resumable and verified.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::BodyExt as _;

use super::transport::{Body, headers};
use super::{
    BlobSink, Client, Error, PlatformSpec, ProgressEvent, ProgressSink, PulledImage, Reference,
    Result, describe_platforms, failed, pull_scope, select_platform, status_error,
};
use crate::digest::{Digest, Hasher};
use crate::oci::{self, Descriptor, Manifest, ManifestKind};

/// Size of the buffers handed to the sink.
const SINK_CHUNK: usize = 1 << 20;
/// Emit a progress event at most every this many bytes.
const PROGRESS_STEP: u64 = 512 << 10;

impl Client {
    /// Fetch a manifest (any of the four types) by tag or digest, verified
    /// against the digest when the reference has one. Returns bytes, media
    /// type and digest.
    pub async fn get_manifest(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<(Bytes, String, Digest)> {
        let host = r.api_host().to_string();
        let path = format!("/v2/{}/manifests/{reference}", r.repository);
        let url = format!("{host}{path}");
        let h = headers(&[(header::ACCEPT, &oci::MANIFEST_TYPES.join(", "))]);
        let resp = self
            .transport
            .send(
                &host,
                Method::GET,
                &path,
                h,
                Body::Empty,
                &[pull_scope(&r.repository)],
            )
            .await?;
        let status = resp.status();
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let limit = 4u64 << 20;
        if resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > limit)
        {
            return Err(Error::Status {
                url,
                status: status.as_u16(),
                code: String::new(),
                message: "manifest larger than 4 MiB".into(),
            });
        }
        let body = http_body_util::Limited::new(resp.into_body(), limit as usize)
            .collect()
            .await
            .map_err(|e| Error::Connect {
                url: url.clone(),
                message: e.to_string(),
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(status_error(&url, status.as_u16(), &body));
        }
        let (_, declared) = Manifest::parse(&body, "").map_err(|source| Error::Manifest {
            reference: r.to_string(),
            source,
        })?;
        let media_type = if media_type.is_empty()
            || media_type == "application/json"
            || media_type == "text/plain"
        {
            declared
        } else {
            media_type
        };
        let digest = match reference.parse::<Digest>() {
            Ok(want) => {
                let mut h = Hasher::new(want.algorithm());
                h.update(&body);
                let got = h.finish();
                if got != want {
                    return Err(Error::DigestMismatch {
                        what: format!("manifest {r}"),
                        expected: want,
                        actual: got,
                    });
                }
                got
            }
            Err(_) => Digest::sha256_of(&body),
        };
        Ok((body, media_type, digest))
    }

    /// Pull `r` for `platform` into `sink`. Blobs the sink has are skipped.
    pub async fn pull(
        &self,
        r: &Reference,
        platform: &PlatformSpec,
        sink: &dyn BlobSink,
        progress: &dyn ProgressSink,
    ) -> Result<PulledImage> {
        progress.event(ProgressEvent::Resolving {
            reference: r.to_string(),
        });
        let (bytes, media_type, digest) = self.get_manifest(r, &r.manifest_reference()).await?;
        let (m, _) = Manifest::parse(&bytes, &media_type).map_err(|source| Error::Manifest {
            reference: r.to_string(),
            source,
        })?;
        let (index, manifest_bytes, manifest_type, manifest_digest, manifest) =
            match m.kind(&media_type) {
                ManifestKind::Index => {
                    let entries = m.manifests.clone().unwrap_or_default();
                    let chosen = select_platform(&entries, platform).ok_or_else(|| {
                        Error::NoMatchingPlatform {
                            reference: r.to_string(),
                            platform: platform.to_string(),
                            available: describe_platforms(&entries),
                        }
                    })?;
                    let (cb, ct, cd) = self.get_manifest(r, &chosen.digest.to_string()).await?;
                    let (cm, _) = Manifest::parse(&cb, &ct).map_err(|source| Error::Manifest {
                        reference: format!("{r}@{cd}"),
                        source,
                    })?;
                    if cm.kind(&ct) != ManifestKind::Image {
                        return Err(Error::UnsupportedMediaType {
                            reference: format!("{r}@{cd}"),
                            media_type: ct,
                        });
                    }
                    (Some((bytes.clone(), media_type.clone())), cb, ct, cd, cm)
                }
                ManifestKind::Image => (None, bytes.clone(), media_type.clone(), digest.clone(), m),
            };
        if !matches!(
            manifest_type.as_str(),
            oci::OCI_MANIFEST | oci::DOCKER_MANIFEST
        ) && manifest.config.is_none()
        {
            return Err(Error::UnsupportedMediaType {
                reference: r.to_string(),
                media_type: manifest_type,
            });
        }
        let config = manifest
            .config
            .clone()
            .ok_or_else(|| Error::UnsupportedMediaType {
                reference: r.to_string(),
                media_type: manifest_type.clone(),
            })?;
        let layers = manifest.layers.clone().unwrap_or_default();
        progress.event(ProgressEvent::Resolved {
            digest: digest.clone(),
            manifest: manifest_digest.clone(),
        });

        // Config first (small), then layers with bounded parallelism.
        self.fetch_blob(r, &config, sink, progress).await?;
        let wanted: Vec<&Descriptor> = layers
            .iter()
            .filter(|d| d.urls.as_ref().is_none_or(Vec::is_empty))
            .collect();
        for d in &wanted {
            progress.event(ProgressEvent::Waiting {
                digest: d.digest.clone(),
            });
        }
        let limit = self.cfg.max_concurrent_downloads.max(1);
        let mut results = futures_util::stream::iter(
            wanted
                .into_iter()
                .map(|d| self.fetch_blob(r, d, sink, progress)),
        )
        .buffer_unordered(limit);
        let mut first_err = None;
        while let Some(res) = results.next().await {
            if let Err(e) = res {
                first_err.get_or_insert(e);
            }
        }
        drop(results);
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(PulledImage {
            reference: r.clone(),
            digest,
            index,
            manifest: (manifest_bytes, manifest_type),
            manifest_digest,
            config,
            layers,
        })
    }

    /// Download one blob into the sink: skip if present, resume a partial
    /// download, retry with back-off, verify size and digest.
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        d: &Descriptor,
        sink: &dyn BlobSink,
        progress: &dyn ProgressSink,
    ) -> Result<()> {
        let digest = &d.digest;
        let sink_err = |source| Error::Sink {
            digest: digest.clone(),
            source,
        };
        if sink.has(digest).await.map_err(sink_err)? {
            progress.event(ProgressEvent::AlreadyExists {
                digest: digest.clone(),
            });
            return Ok(());
        }
        let mut hasher = Hasher::new(digest.algorithm());
        let mut offset = 0u64;
        if let Some((n, mut s)) = sink.partial(digest).await.map_err(sink_err)? {
            if n <= d.size {
                let mut seen = 0u64;
                while let Some(c) = s.next().await {
                    let c = c.map_err(sink_err)?;
                    hasher.update(&c);
                    seen += c.len() as u64;
                }
                if seen == n {
                    offset = n;
                } else {
                    hasher = Hasher::new(digest.algorithm());
                }
            }
        }
        let host = r.api_host().to_string();
        let path = format!("/v2/{}/blobs/{digest}", r.repository);
        let url = format!("{host}{path}");
        let mut attempt = 0u32;
        loop {
            match self
                .download_from(
                    &host,
                    &path,
                    &url,
                    d,
                    sink,
                    progress,
                    &mut hasher,
                    &mut offset,
                )
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < self.cfg.max_retries && transient(&e) => {
                    attempt += 1;
                    progress.event(ProgressEvent::Retrying {
                        digest: digest.clone(),
                        attempt,
                        error: crate::error_chain(&e),
                    });
                    tokio::time::sleep(self.transport.backoff(attempt - 1, None)).await;
                }
                Err(e) => return Err(e),
            }
        }
        if offset != d.size {
            sink.discard(digest).await.map_err(sink_err)?;
            return Err(Error::SizeMismatch {
                what: format!("blob {digest}"),
                expected: d.size,
                actual: offset,
            });
        }
        let actual = std::mem::replace(&mut hasher, Hasher::new(digest.algorithm())).finish();
        if &actual != digest {
            sink.discard(digest).await.map_err(sink_err)?;
            return Err(Error::DigestMismatch {
                what: format!("blob of {r}"),
                expected: digest.clone(),
                actual,
            });
        }
        sink.commit(digest, d.size).await.map_err(sink_err)?;
        progress.event(ProgressEvent::DownloadComplete {
            digest: digest.clone(),
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn download_from(
        &self,
        host: &str,
        path: &str,
        url: &str,
        d: &Descriptor,
        sink: &dyn BlobSink,
        progress: &dyn ProgressSink,
        hasher: &mut Hasher,
        offset: &mut u64,
    ) -> Result<()> {
        let digest = &d.digest;
        let sink_err = |source| Error::Sink {
            digest: digest.clone(),
            source,
        };
        if *offset == d.size && d.size > 0 {
            return Ok(());
        }
        let h = if *offset > 0 {
            headers(&[(header::RANGE, &format!("bytes={}-", *offset))])
        } else {
            HeaderMap::new()
        };
        let resp = self
            .transport
            .send(
                host,
                Method::GET,
                path,
                h,
                Body::Empty,
                &[pull_scope(path_repo(path))],
            )
            .await?;
        let status = resp.status();
        if status == StatusCode::OK && *offset > 0 {
            // The server ignored the range: start over.
            *offset = 0;
            *hasher = Hasher::new(digest.algorithm());
        } else if status == StatusCode::PARTIAL_CONTENT {
            let start = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(*offset) {
                return Err(Error::Status {
                    url: url.to_string(),
                    status: 206,
                    code: String::new(),
                    message: format!("range response does not start at {}", *offset),
                });
            }
        } else if !status.is_success() {
            return Err(failed(resp, url).await);
        }
        let mut body = resp.into_body().into_data_stream();
        let mut buf = BytesMut::with_capacity(SINK_CHUNK);
        let mut buf_start = *offset;
        let mut last_report = *offset;
        let flush = |buf: &mut BytesMut, buf_start: &mut u64| {
            let data = buf.split().freeze();
            let at = *buf_start;
            *buf_start += data.len() as u64;
            (at, data)
        };
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    if *offset + chunk.len() as u64 > d.size {
                        return Err(Error::SizeMismatch {
                            what: format!("blob {digest}"),
                            expected: d.size,
                            actual: *offset + chunk.len() as u64,
                        });
                    }
                    hasher.update(&chunk);
                    *offset += chunk.len() as u64;
                    buf.extend_from_slice(&chunk);
                    if buf.len() >= SINK_CHUNK {
                        let (at, data) = flush(&mut buf, &mut buf_start);
                        sink.write(digest, at, data).await.map_err(sink_err)?;
                    }
                    if *offset - last_report >= PROGRESS_STEP {
                        last_report = *offset;
                        progress.event(ProgressEvent::Progress {
                            digest: digest.clone(),
                            current: *offset,
                            total: d.size,
                            upload: false,
                        });
                    }
                }
                Some(Err(e)) => {
                    // Keep what arrived so the retry resumes after it.
                    if !buf.is_empty() {
                        let (at, data) = flush(&mut buf, &mut buf_start);
                        sink.write(digest, at, data).await.map_err(sink_err)?;
                    }
                    return Err(Error::Connect {
                        url: url.to_string(),
                        message: format!("body: {e}"),
                    });
                }
                None => break,
            }
        }
        if !buf.is_empty() || (buf_start == 0 && d.size == 0) {
            let (at, data) = flush(&mut buf, &mut buf_start);
            sink.write(digest, at, data).await.map_err(sink_err)?;
        }
        progress.event(ProgressEvent::Progress {
            digest: digest.clone(),
            current: *offset,
            total: d.size,
            upload: false,
        });
        Ok(())
    }
}

/// Errors worth another try: the connection, or a server-side status.
fn transient(e: &Error) -> bool {
    match e {
        Error::Connect { .. } => true,
        Error::Status { status, .. } => *status >= 500 || matches!(*status, 206 | 408 | 429),
        _ => false,
    }
}

/// The repository part of `/v2/<repo>/blobs/...`.
fn path_repo(path: &str) -> &str {
    let rest = path.strip_prefix("/v2/").unwrap_or(path);
    match rest.rfind("/blobs/") {
        Some(i) => &rest[..i],
        None => rest,
    }
}
