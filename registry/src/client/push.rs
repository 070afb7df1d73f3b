//! Push: blobs first (existence check, cross-repository mount, then upload
//! streamed or chunked with a monolithic fallback), manifests last. Also
//! the pieces a caller needs to push an index whose children it does not
//! all hold: whether a manifest is in a repository already, and a copy of
//! a manifest with its blobs from another repository (mounted where the
//! registry allows, streamed through otherwise).

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::BodyExt as _;
use tokio::sync::mpsc;

use super::transport::{Body, headers, resolve_url};
use super::{
    BlobSource, Client, Error, ProgressEvent, ProgressSink, PushImage, PushResult, Reference,
    Result, expect_status, failed, pull_scope, push_scope, status_error,
};
use crate::digest::Digest;
use crate::oci::{Descriptor, Manifest, ManifestKind};
use crate::storage::ByteStream;

const PROGRESS_STEP: u64 = 512 << 10;

fn with_query(loc: &str, q: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}{q}")
}

/// Why an upload attempt failed: transient (retry the blob) or final.
enum Attempt {
    Retry(Error),
    Fatal(Error),
}

/// Blobs of another repository (on this or another registry), for copying
/// a manifest's blobs: mounted when the target shares the registry,
/// otherwise streamed from a GET into the upload.
struct RemoteSource<'a> {
    client: &'a Client,
    from: Reference,
}

#[async_trait::async_trait]
impl BlobSource for RemoteSource<'_> {
    async fn open(&self, digest: &Digest) -> std::io::Result<ByteStream> {
        self.open_at(digest, 0).await
    }

    async fn open_at(&self, digest: &Digest, offset: u64) -> std::io::Result<ByteStream> {
        let host = self.from.api_host().to_string();
        let path = format!("/v2/{}/blobs/{digest}", self.from.repository);
        let h = if offset > 0 {
            headers(&[(header::RANGE, &format!("bytes={offset}-"))])
        } else {
            HeaderMap::new()
        };
        let resp = self
            .client
            .transport
            .send(
                &host,
                Method::GET,
                &path,
                h,
                Body::Empty,
                &[pull_scope(&self.from.repository)],
            )
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status();
        let ok = if offset > 0 {
            status == StatusCode::PARTIAL_CONTENT
        } else {
            status == StatusCode::OK
        };
        if !ok {
            return Err(std::io::Error::other(
                failed(resp, &format!("{host}{path}")).await,
            ));
        }
        Ok(Box::pin(
            resp.into_body()
                .into_data_stream()
                .map(|r| r.map_err(std::io::Error::other)),
        ))
    }

    fn mount_candidates(&self, _digest: &Digest) -> Vec<Reference> {
        vec![self.from.clone()]
    }
}

impl Client {
    /// Whether the repository of `r` holds the manifest `digest` (HEAD).
    pub async fn manifest_exists(&self, r: &Reference, digest: &Digest) -> Result<bool> {
        let host = r.api_host().to_string();
        let path = format!("/v2/{}/manifests/{digest}", r.repository);
        let resp = self
            .transport
            .send(
                &host,
                Method::HEAD,
                &path,
                headers(&[(header::ACCEPT, &crate::oci::MANIFEST_TYPES.join(", "))]),
                Body::Empty,
                &[pull_scope(&r.repository)],
            )
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(status_error(&format!("{host}{path}"), s.as_u16(), b"")),
        }
    }

    /// Copy the manifest `digest` from the repository of `from` to the
    /// repository of `to`, byte-exact, with every blob it names (and, for
    /// an index, every manifest it names). Blobs are mounted when both
    /// repositories are on the same registry and it agrees, streamed
    /// through this client otherwise.
    pub async fn copy_manifest(
        &self,
        from: &Reference,
        to: &Reference,
        digest: &Digest,
        progress: &dyn ProgressSink,
    ) -> Result<PushResult> {
        let (bytes, media_type, _) = self.get_manifest(from, &digest.to_string()).await?;
        let (m, _) = Manifest::parse(&bytes, &media_type).map_err(|source| Error::Manifest {
            reference: format!("{from}@{digest}"),
            source,
        })?;
        match m.kind(&media_type) {
            ManifestKind::Index => {
                for child in m.manifests.iter().flatten() {
                    if !self.manifest_exists(to, &child.digest).await? {
                        Box::pin(self.copy_manifest(from, to, &child.digest, progress)).await?;
                    }
                }
            }
            ManifestKind::Image => {
                let source = RemoteSource {
                    client: self,
                    from: from.clone(),
                };
                let blobs = m
                    .config
                    .iter()
                    .chain(m.layers.iter().flatten())
                    .filter(|d| d.urls.as_ref().is_none_or(Vec::is_empty));
                for d in blobs {
                    self.push_blob(to, d, &source, progress).await?;
                }
            }
        }
        self.put_manifest(
            &to.with_digest(digest.clone()),
            bytes,
            &media_type,
            progress,
        )
        .await
    }

    /// Push `image` to `r` (tag or digest) reading blobs from `source`.
    pub async fn push(
        &self,
        r: &Reference,
        image: &PushImage,
        source: &dyn BlobSource,
        progress: &dyn ProgressSink,
    ) -> Result<PushResult> {
        if let PushImage::Index { children, .. } = image {
            for child in children {
                let (bytes, _) = child.manifest();
                let d = Digest::sha256_of(bytes);
                Box::pin(self.push(&r.with_digest(d), child, source, progress)).await?;
            }
        }
        if let PushImage::Image { blobs, .. } = image {
            let limit = self.cfg.max_concurrent_uploads.max(1);
            let mut jobs = futures_util::stream::iter(
                blobs.iter().map(|d| self.push_blob(r, d, source, progress)),
            )
            .buffer_unordered(limit);
            let mut first_err = None;
            while let Some(res) = jobs.next().await {
                if let Err(e) = res {
                    first_err.get_or_insert(e);
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        let (bytes, media_type) = image.manifest();
        self.put_manifest(r, bytes.clone(), media_type, progress)
            .await
    }

    /// Store manifest bytes under the reference's digest (if pinned) or tag.
    pub async fn put_manifest(
        &self,
        r: &Reference,
        bytes: Bytes,
        media_type: &str,
        progress: &dyn ProgressSink,
    ) -> Result<PushResult> {
        let digest = Digest::sha256_of(&bytes);
        let reference = match (&r.digest, &r.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => digest.to_string(),
        };
        let host = r.api_host().to_string();
        let path = format!("/v2/{}/manifests/{reference}", r.repository);
        let url = format!("{host}{path}");
        let size = bytes.len() as u64;
        let resp = self
            .transport
            .send(
                &host,
                Method::PUT,
                &path,
                headers(&[(header::CONTENT_TYPE, media_type)]),
                Body::Bytes(bytes),
                &[push_scope(&r.repository)],
            )
            .await?;
        expect_status(resp, &url, |s| s.is_success()).await?;
        progress.event(ProgressEvent::ManifestPushed {
            digest: digest.clone(),
            size,
            tag: r.digest.is_none().then(|| r.tag.clone()).flatten(),
        });
        Ok(PushResult { digest, size })
    }

    /// Make one blob present in the target repository.
    pub async fn push_blob(
        &self,
        r: &Reference,
        d: &Descriptor,
        source: &dyn BlobSource,
        progress: &dyn ProgressSink,
    ) -> Result<()> {
        let host = r.api_host().to_string();
        let repo = &r.repository;
        let digest = &d.digest;
        let scopes = vec![push_scope(repo)];

        // Exists already?
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .transport
            .send(
                &host,
                Method::HEAD,
                &path,
                HeaderMap::new(),
                Body::Empty,
                &scopes,
            )
            .await?;
        if resp.status() == StatusCode::OK {
            progress.event(ProgressEvent::AlreadyExists {
                digest: digest.clone(),
            });
            return Ok(());
        }

        // Mount from a repository on the same registry.
        let mut session: Option<String> = None;
        for cand in source.mount_candidates(digest) {
            if cand.registry != r.registry || cand.repository == *repo {
                continue;
            }
            let mut s = scopes.clone();
            s.push(format!("repository:{}:pull", cand.repository));
            let path = format!(
                "/v2/{repo}/blobs/uploads/?mount={digest}&from={}",
                cand.repository
            );
            let resp = self
                .transport
                .send(
                    &host,
                    Method::POST,
                    &path,
                    HeaderMap::new(),
                    Body::Empty,
                    &s,
                )
                .await?;
            match resp.status() {
                StatusCode::CREATED => {
                    progress.event(ProgressEvent::Mounted {
                        digest: digest.clone(),
                        from: cand.repository.clone(),
                    });
                    return Ok(());
                }
                StatusCode::ACCEPTED => {
                    session = resp
                        .headers()
                        .get(header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from);
                    break;
                }
                _ => {}
            }
        }

        let mut attempt = 0u32;
        loop {
            let res = self
                .upload_once(&host, r, d, source, progress, session.take())
                .await;
            match res {
                Ok(()) => break,
                Err(Attempt::Retry(e)) if attempt < self.cfg.max_retries => {
                    attempt += 1;
                    progress.event(ProgressEvent::Retrying {
                        digest: digest.clone(),
                        attempt,
                        error: crate::error_chain(&e),
                    });
                    tokio::time::sleep(self.transport.backoff(attempt - 1, None)).await;
                }
                Err(Attempt::Retry(e) | Attempt::Fatal(e)) => return Err(e),
            }
        }
        progress.event(ProgressEvent::Pushed {
            digest: digest.clone(),
        });
        Ok(())
    }

    async fn start_session(&self, host: &str, repo: &str) -> std::result::Result<String, Attempt> {
        let path = format!("/v2/{repo}/blobs/uploads/");
        let url = format!("{host}{path}");
        let resp = self
            .transport
            .send(
                host,
                Method::POST,
                &path,
                HeaderMap::new(),
                Body::Empty,
                &[push_scope(repo)],
            )
            .await
            .map_err(Attempt::Retry)?;
        let status = resp.status();
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        if let Err(e) = expect_status(resp, &url, |s| s == StatusCode::ACCEPTED).await {
            return Err(
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    Attempt::Retry(e)
                } else {
                    Attempt::Fatal(e)
                },
            );
        }
        let loc = loc.ok_or_else(|| {
            Attempt::Fatal(Error::Status {
                url: url.clone(),
                status: 202,
                code: String::new(),
                message: "upload started without a Location".into(),
            })
        })?;
        let base = self
            .transport
            .base_url(host)
            .await
            .map_err(Attempt::Fatal)?;
        Ok(resolve_url(&format!("{base}{path}"), &loc))
    }

    #[allow(clippy::too_many_lines)]
    async fn upload_once(
        &self,
        host: &str,
        r: &Reference,
        d: &Descriptor,
        source: &dyn BlobSource,
        progress: &dyn ProgressSink,
        session: Option<String>,
    ) -> std::result::Result<(), Attempt> {
        let repo = &r.repository;
        let digest = &d.digest;
        let scopes = [push_scope(repo)];
        let src_err = |source| {
            Attempt::Fatal(Error::Source {
                digest: digest.clone(),
                source,
            })
        };
        let mut loc = match session {
            Some(l) => {
                let base = self
                    .transport
                    .base_url(host)
                    .await
                    .map_err(Attempt::Fatal)?;
                resolve_url(&format!("{base}/v2/{repo}/blobs/uploads/"), &l)
            }
            None => self.start_session(host, repo).await?,
        };

        let mut chunked_ok = false;
        if let Some(chunk) = self.cfg.chunk_size.filter(|c| *c > 0 && d.size > *c) {
            // Chunked: PATCH with Content-Range, one chunk at a time.
            let mut offset = 0u64;
            let mut refused = false;
            let mut stream = source.open(digest).await.map_err(src_err)?;
            let mut pending = bytes::BytesMut::new();
            while offset < d.size {
                while (pending.len() as u64) < chunk.min(d.size - offset) {
                    match stream.next().await {
                        Some(Ok(b)) => pending.extend_from_slice(&b),
                        Some(Err(e)) => return Err(src_err(e)),
                        None => break,
                    }
                }
                let take = (pending.len() as u64).min(chunk) as usize;
                if take == 0 {
                    return Err(Attempt::Fatal(Error::SizeMismatch {
                        what: format!("blob {digest} from the source"),
                        expected: d.size,
                        actual: offset,
                    }));
                }
                let data = pending.split_to(take).freeze();
                let end = offset + data.len() as u64 - 1;
                let h = headers(&[
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (header::CONTENT_RANGE, &format!("{offset}-{end}")),
                    (header::CONTENT_LENGTH, &data.len().to_string()),
                ]);
                let resp = self
                    .transport
                    .send(
                        host,
                        Method::PATCH,
                        &loc,
                        h,
                        Body::Bytes(data.clone()),
                        &scopes,
                    )
                    .await
                    .map_err(Attempt::Retry)?;
                let status = resp.status();
                let next = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(|l| resolve_url(&loc, l));
                let _ = resp.into_body().collect().await;
                if status != StatusCode::ACCEPTED {
                    if offset == 0 && status.is_client_error() && status != StatusCode::UNAUTHORIZED
                    {
                        // The registry does not take chunks: fall back.
                        refused = true;
                        break;
                    }
                    return Err(Attempt::Retry(Error::Status {
                        url: loc.clone(),
                        status: status.as_u16(),
                        code: String::new(),
                        message: format!("chunk {offset}-{end} refused"),
                    }));
                }
                if let Some(n) = next {
                    loc = n;
                }
                offset = end + 1;
                progress.event(ProgressEvent::Progress {
                    digest: digest.clone(),
                    current: offset,
                    total: d.size,
                    upload: true,
                });
            }
            if refused {
                tracing::debug!(%digest, "registry refused chunked upload; falling back to a monolithic PUT");
                let _ = self
                    .transport
                    .send(
                        host,
                        Method::DELETE,
                        &loc,
                        HeaderMap::new(),
                        Body::Empty,
                        &scopes,
                    )
                    .await;
                loc = self.start_session(host, repo).await?;
                let s = source.open(digest).await.map_err(src_err)?;
                let (s, rx) = progress_stream(s, d.size);
                let h = headers(&[
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (header::CONTENT_LENGTH, &d.size.to_string()),
                ]);
                let url = with_query(&loc, &format!("digest={digest}"));
                let send =
                    self.transport
                        .send(host, Method::PUT, &url, h, Body::Stream(s), &scopes);
                let resp = with_progress(send, rx, digest, d.size, progress)
                    .await
                    .map_err(Attempt::Retry)?;
                return finish(resp, &url, digest).await;
            }
            chunked_ok = true;
        }
        if !chunked_ok {
            // Streamed: the whole blob in one PATCH.
            let s = source.open(digest).await.map_err(src_err)?;
            let (s, rx) = progress_stream(s, d.size);
            let h = headers(&[
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CONTENT_LENGTH, &d.size.to_string()),
            ]);
            let send = self
                .transport
                .send(host, Method::PATCH, &loc, h, Body::Stream(s), &scopes);
            let resp = with_progress(send, rx, digest, d.size, progress)
                .await
                .map_err(Attempt::Retry)?;
            let next = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| resolve_url(&loc, l));
            expect_status(resp, &loc, |s| {
                s == StatusCode::ACCEPTED || s == StatusCode::NO_CONTENT
            })
            .await
            .map_err(Attempt::Retry)?;
            if let Some(n) = next {
                loc = n;
            }
        }
        let url = with_query(&loc, &format!("digest={digest}"));
        let resp = self
            .transport
            .send(
                host,
                Method::PUT,
                &url,
                headers(&[(header::CONTENT_LENGTH, "0")]),
                Body::Empty,
                &scopes,
            )
            .await
            .map_err(Attempt::Retry)?;
        finish(resp, &url, digest).await
    }
}

async fn finish(
    resp: http::Response<hyper::body::Incoming>,
    url: &str,
    digest: &Digest,
) -> std::result::Result<(), Attempt> {
    let status = resp.status();
    let returned = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    let created =
        |s| s == StatusCode::CREATED || s == StatusCode::NO_CONTENT || s == StatusCode::OK;
    if let Err(e) = expect_status(resp, url, created).await {
        return Err(
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                Attempt::Retry(e)
            } else {
                Attempt::Fatal(e)
            },
        );
    }
    if let Some(r) = returned {
        if &r != digest {
            return Err(Attempt::Fatal(Error::DigestMismatch {
                what: format!("upload to {url}"),
                expected: digest.clone(),
                actual: r,
            }));
        }
    }
    Ok(())
}

/// Count bytes as they leave the source; the counts arrive on the
/// returned channel every [`PROGRESS_STEP`] bytes.
fn progress_stream(s: ByteStream, total: u64) -> (ByteStream, mpsc::UnboundedReceiver<u64>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut sent = 0u64;
    let mut last = 0u64;
    let s = Box::pin(s.map(move |r| {
        if let Ok(b) = &r {
            sent += b.len() as u64;
            if sent - last >= PROGRESS_STEP || sent == total {
                last = sent;
                let _ = tx.send(sent);
            }
        }
        r
    }));
    (s, rx)
}

/// Drive `fut` while turning byte counts into progress events.
async fn with_progress<F: std::future::Future>(
    fut: F,
    mut rx: mpsc::UnboundedReceiver<u64>,
    digest: &Digest,
    total: u64,
    progress: &dyn ProgressSink,
) -> F::Output {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => {
                while let Ok(n) = rx.try_recv() {
                    progress.event(ProgressEvent::Progress { digest: digest.clone(), current: n, total, upload: true });
                }
                return out;
            }
            Some(n) = rx.recv() => {
                progress.event(ProgressEvent::Progress { digest: digest.clone(), current: n, total, upload: true });
            }
        }
    }
}
