//! Downloads for `ADD <url>`: one file over `http://` or `https://` into a
//! file of the build's private temporary directory.
//!
//! It speaks HTTP/1.1 through hyper's connection API on a tokio socket,
//! with rustls for `https://`. It trusts what the daemon's registry
//! client trusts (`transport::verified_tls`: the system's roots through
//! `rustls-native-certs`, which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`), plus any CA files the builder is given. Redirects are followed (at most
//! [`MAX_REDIRECTS`], never from `https` down to `http`), a body shorter
//! than its `Content-Length` is an error, every wait (connect, handshake,
//! headers, each piece of the body) has a time limit, and an `--checksum`
//! is checked before the caller sees the file. The file gets its mtime
//! from `Last-Modified`, else the epoch, as BuildKit does.
//!
//! It owns the transfer only: where the file lands in the layer, its
//! owner and mode are the executor's.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncWrite};

/// Redirects followed for one download (Go's HTTP client, which Docker
/// uses, stops after 10 too).
pub const MAX_REDIRECTS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ADD {url}: only http:// and https:// URLs can be downloaded")]
    Scheme { url: String },
    #[error("ADD {url}: invalid URL")]
    InvalidUrl {
        url: String,
        #[source]
        source: http::Error,
    },
    #[error("ADD {url}: connecting to {authority}")]
    Connect {
        url: String,
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ADD {url}: TLS handshake with {authority} failed{hint}")]
    Tls {
        url: String,
        authority: String,
        /// What the failure most likely means, with a leading separator.
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("ADD {url}: no progress from {authority} in {limit:?} while {during}")]
    Timeout {
        url: String,
        authority: String,
        limit: Duration,
        during: &'static str,
    },
    #[error("ADD {url}: HTTP exchange with {authority}")]
    Http {
        url: String,
        authority: String,
        #[source]
        source: hyper::Error,
    },
    #[error("ADD {url}: server answered {status}")]
    Status { url: String, status: u16 },
    #[error("ADD {url}: redirect {status} without a Location header")]
    NoLocation { url: String, status: u16 },
    #[error("ADD {url}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects { url: String },
    #[error("ADD {url}: refusing the redirect from https to {location}")]
    Downgrade { url: String, location: String },
    #[error("ADD {url}: the body ended after {got} of the {expected} bytes announced")]
    ShortBody {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error("ADD {url}: checksum mismatch: expected {expected}, downloaded {actual}")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("ADD --checksum={0}: use sha256:, sha384: or sha512: and the hex digest")]
    ChecksumFormat(String),
    #[error("ADD {url}: writing {}", path.display())]
    Write {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS client configuration for downloads")]
    TlsSetup(#[source] vessel_registry::client::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a download produced.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The body's sha256, `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    /// The file name the URL implies (its last path segment), else the
    /// response's `Content-Disposition` file name, else `__unnamed__`.
    pub name: String,
}

/// A downloader with its TLS configuration and time limit.
#[derive(Clone)]
pub struct Fetcher {
    tls: Arc<rustls::ClientConfig>,
    /// The longest wait for any one thing: the connection, the handshake,
    /// the response head, the next piece of the body.
    timeout: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An `--checksum` value, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    algorithm: &'static str,
    hex: String,
}

impl Checksum {
    pub fn parse(s: &str) -> Result<Checksum> {
        let bad = || Error::ChecksumFormat(s.to_string());
        let (alg, hex) = s.split_once(':').ok_or_else(bad)?;
        let (algorithm, len) = match alg {
            "sha256" => ("sha256", 64),
            "sha384" => ("sha384", 96),
            "sha512" => ("sha512", 128),
            _ => return Err(bad()),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Checksum {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

/// The hashes a download keeps: always sha256 (the cache key), and the
/// `--checksum` algorithm when it is another.
struct Hashes {
    sha256: sha2::Sha256,
    other: Option<(&'static str, Box<dyn sha2::digest::DynDigest + Send>)>,
}

impl Hashes {
    fn new(checksum: Option<&Checksum>) -> Hashes {
        let other: Option<(&'static str, Box<dyn sha2::digest::DynDigest + Send>)> =
            match checksum.map(|c| c.algorithm) {
                Some("sha384") => Some(("sha384", Box::new(sha2::Sha384::new()))),
                Some("sha512") => Some(("sha512", Box::new(sha2::Sha512::new()))),
                _ => None,
            };
        Hashes {
            sha256: sha2::Sha256::new(),
            other,
        }
    }

    fn update(&mut self, b: &[u8]) {
        self.sha256.update(b);
        if let Some((_, h)) = &mut self.other {
            h.update(b);
        }
    }

    /// (`sha256:<hex>`, the `--checksum` algorithm's `alg:<hex>`).
    fn finish(self) -> (String, Option<String>) {
        let sha256 = format!("sha256:{}", hex::encode(self.sha256.finalize()));
        let other = self
            .other
            .map(|(alg, h)| format!("{alg}:{}", hex::encode(h.finalize())));
        (sha256, other)
    }
}

/// The stream under one HTTP connection.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Fetcher {
    /// A fetcher trusting what registries are trusted with, plus the PEM
    /// files in `ca_files`, waiting at most `timeout` for any one thing.
    pub fn new(ca_files: &[PathBuf], timeout: Duration) -> Result<Fetcher> {
        let roots = vessel_registry::client::ClientConfig {
            ca_files: ca_files.to_vec(),
            ..Default::default()
        };
        let tls = vessel_registry::client::transport::verified_tls(&roots, None)
            .map_err(Error::TlsSetup)?;
        Ok(Fetcher {
            tls: Arc::new(tls),
            timeout,
        })
    }

    /// Download `url` into `dest` (created, mode 0600), verifying
    /// `checksum` if given.
    pub async fn fetch(
        &self,
        url: &str,
        dest: &Path,
        checksum: Option<&Checksum>,
    ) -> Result<Fetched> {
        let mut current = url.to_string();
        let mut redirects = 0;
        let resp = loop {
            let (resp, authority) = self.get(url, &current).await?;
            let status = resp.status();
            if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                let Some(loc) = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                else {
                    return Err(Error::NoLocation {
                        url: url.to_string(),
                        status: status.as_u16(),
                    });
                };
                if redirects == MAX_REDIRECTS {
                    return Err(Error::TooManyRedirects {
                        url: url.to_string(),
                    });
                }
                redirects += 1;
                let next = vessel_registry::client::transport::resolve_url(&current, loc);
                if is_downgrade(&current, &next) {
                    return Err(Error::Downgrade {
                        url: url.to_string(),
                        location: next,
                    });
                }
                tracing::debug!(from = %current, to = %next, status = status.as_u16(), "ADD redirect");
                current = next;
                continue;
            }
            if !status.is_success() {
                return Err(Error::Status {
                    url: url.to_string(),
                    status: status.as_u16(),
                });
            }
            break (resp, authority);
        };
        let (resp, authority) = resp;
        self.save(url, resp, &authority, dest, checksum).await
    }

    /// One GET, without following anything.
    async fn get(&self, url: &str, current: &str) -> Result<(http::Response<Incoming>, String)> {
        let invalid = |source: http::Error| Error::InvalidUrl {
            url: url.to_string(),
            source,
        };
        let uri: Uri = current.parse().map_err(|e| invalid(http::Error::from(e)))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(Error::Scheme {
                    url: url.to_string(),
                });
            }
        };
        let full = uri
            .authority()
            .map(ToString::to_string)
            .ok_or(Error::Scheme {
                url: url.to_string(),
            })?;
        // `user:password@` in the URL is sent as basic authentication, as
        // Go's client (Docker's) does, not in the Host header; messages
        // name the server without it.
        let (userinfo, authority) = match full.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h.to_string()),
            None => (None, full),
        };
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let timeout = |during: &'static str| Error::Timeout {
            url: url.to_string(),
            authority: authority.clone(),
            limit: self.timeout,
            during,
        };
        let tcp = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| timeout("connecting"))?
        .map_err(|source| Error::Connect {
            url: url.to_string(),
            authority: authority.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if https {
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                Error::Connect {
                    url: url.to_string(),
                    authority: authority.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                }
            })?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone());
            let stream = tokio::time::timeout(self.timeout, tls.connect(name, tcp))
                .await
                .map_err(|_| timeout("in the TLS handshake"))?
                .map_err(|source| Error::Tls {
                    url: url.to_string(),
                    authority: authority.clone(),
                    hint: tls_hint(&source),
                    source,
                })?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let http_err = |source| Error::Http {
            url: url.to_string(),
            authority: authority.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http_err)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "ADD download connection");
            }
        });
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::get(target).header(header::HOST, authority.as_str());
        if let Some(u) = &userinfo {
            use base64::Engine as _;
            let enc = base64::engine::general_purpose::STANDARD.encode(percent_decode(u));
            req = req.header(header::AUTHORIZATION, format!("Basic {enc}"));
        }
        let req = req
            .header(
                header::USER_AGENT,
                concat!("vessel-builder/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::ACCEPT_ENCODING, "identity")
            .body(Empty::<Bytes>::new())
            .map_err(invalid)?;
        let resp = tokio::time::timeout(self.timeout, sender.send_request(req))
            .await
            .map_err(|_| timeout("waiting for the response"))?
            .map_err(http_err)?;
        Ok((resp, authority))
    }

    /// Stream the body of a 2xx answer into `dest`; nothing is left there
    /// when that fails.
    async fn save(
        &self,
        url: &str,
        resp: http::Response<Incoming>,
        authority: &str,
        dest: &Path,
        checksum: Option<&Checksum>,
    ) -> Result<Fetched> {
        let r = self.save_inner(url, resp, authority, dest, checksum).await;
        if r.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        r
    }

    async fn save_inner(
        &self,
        url: &str,
        resp: http::Response<Incoming>,
        authority: &str,
        dest: &Path,
        checksum: Option<&Checksum>,
    ) -> Result<Fetched> {
        let headers = resp.headers().clone();
        let expected: Option<u64> = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let write_err = |source| Error::Write {
            url: url.to_string(),
            path: dest.to_path_buf(),
            source,
        };
        let file = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dest)
                .map_err(write_err)?
        };
        let mut out = std::io::BufWriter::with_capacity(1 << 16, &file);
        let mut hashes = Hashes::new(checksum);
        let mut size = 0u64;
        let mut body = resp.into_body();
        loop {
            let frame = tokio::time::timeout(self.timeout, body.frame())
                .await
                .map_err(|_| Error::Timeout {
                    url: url.to_string(),
                    authority: authority.to_string(),
                    limit: self.timeout,
                    during: "reading the body",
                })?;
            let frame = match frame {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    // A connection closed early: a short body when the
                    // length was announced, else a broken exchange.
                    if let Some(expected) = expected.filter(|&n| size < n) {
                        return Err(Error::ShortBody {
                            url: url.to_string(),
                            got: size,
                            expected,
                        });
                    }
                    return Err(Error::Http {
                        url: url.to_string(),
                        authority: authority.to_string(),
                        source: e,
                    });
                }
            };
            if let Ok(data) = frame.into_data() {
                hashes.update(&data);
                out.write_all(&data).map_err(write_err)?;
                size += data.len() as u64;
            }
        }
        if let Some(expected) = expected.filter(|&n| size != n) {
            return Err(Error::ShortBody {
                url: url.to_string(),
                got: size,
                expected,
            });
        }
        out.flush().map_err(write_err)?;
        drop(out);
        let (digest, other) = hashes.finish();
        if let Some(want) = checksum {
            let got = other.unwrap_or_else(|| digest.clone());
            if got != want.to_string() {
                return Err(Error::Checksum {
                    url: url.to_string(),
                    expected: want.to_string(),
                    actual: got,
                });
            }
        }
        let mtime = headers
            .get(header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        file.set_times(
            std::fs::FileTimes::new()
                .set_modified(mtime)
                .set_accessed(mtime),
        )
        .map_err(write_err)?;
        // Named after the URL the Dockerfile gave, not where it led.
        let name = file_name(url, headers.get(header::CONTENT_DISPOSITION));
        Ok(Fetched { digest, size, name })
    }
}

/// `%XX` escapes decoded (user information in a URL).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Whether following `from` to `to` would leave TLS.
fn is_downgrade(from: &str, to: &str) -> bool {
    from.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        && !to
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// What a handshake failure most likely means.
fn tls_hint(e: &std::io::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("invalid peer certificate") {
        ": the server's certificate is not trusted by this daemon (system roots, SSL_CERT_FILE, SSL_CERT_DIR)"
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        ": the server speaks plain HTTP"
    } else {
        ""
    }
}

/// The name a downloaded file gets: the URL path's last segment, else the
/// `Content-Disposition` file name, else `__unnamed__`. Never `.`, `..`
/// or anything with a slash.
pub fn file_name(url: &str, disposition: Option<&header::HeaderValue>) -> String {
    let usable = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']);
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_host = path.splitn(4, '/').nth(3).unwrap_or("");
    if let Some(n) = after_host.rsplit('/').find(|s| !s.is_empty()) {
        if usable(n) {
            return n.to_string();
        }
    }
    if let Some(n) = disposition
        .and_then(|v| v.to_str().ok())
        .and_then(disposition_file_name)
    {
        if usable(&n) {
            return n;
        }
    }
    "__unnamed__".to_string()
}

/// The `filename` parameter of a `Content-Disposition` value.
fn disposition_file_name(v: &str) -> Option<String> {
    for part in v.split(';').skip(1) {
        let (k, val) = part.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("filename") {
            let val = val.trim();
            let val = val
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(val);
            let base = val.rsplit(['/', '\\']).next().unwrap_or(val);
            return Some(base.to_string());
        }
    }
    None
}

/// Parse an HTTP date in any of the three forms HTTP/1.1 allows:
/// `Sun, 06 Nov 1994 08:49:37 GMT`, `Sunday, 06-Nov-94 08:49:37 GMT` and
/// `Sun Nov  6 08:49:37 1994`.
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let words: Vec<&str> = text.split_whitespace().collect();
    let (day, month, year, clock) = match words.as_slice() {
        [weekday, day, month, year, clock, "GMT"] if weekday.ends_with(',') => {
            (*day, *month, year.parse::<i64>().ok()?, *clock)
        }
        [weekday, date, clock, "GMT"] if weekday.ends_with(',') => {
            let mut parts = date.split('-');
            let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
            let year: i64 = year.parse().ok()?;
            // Two-digit years: 70-99 are the 1900s, the rest the 2000s.
            let year = match year {
                0..=69 => 2000 + year,
                70..=99 => 1900 + year,
                _ => year,
            };
            (day, month, year, *clock)
        }
        [_, month, day, clock, year] => (*day, *month, year.parse::<i64>().ok()?, *clock),
        _ => return None,
    };
    let day: i64 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let mut fields = clock.split(':').map(|x| x.parse::<i64>().ok());
    let (hour, minute, second) = (fields.next()??, fields.next()??, fields.next()??);
    if fields.next().is_some()
        || !(1..=31).contains(&day)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0..=60).contains(&second)
        || year < 1970
    {
        return None;
    }
    let secs = crate::engine::container::days_from_civil(year, month, day) * 86_400
        + hour * 3600
        + minute * 60
        + second;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn http_dates_in_all_three_forms() {
        let want = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(want));
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(want)
        );
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(want));
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(951_825_600))
        );
        for bad in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_come_from_the_path_then_the_disposition() {
        let cd = header::HeaderValue::from_static("attachment; filename=\"pkg.tar.gz\"");
        assert_eq!(file_name("http://h:1/a/b.txt?x=1", Some(&cd)), "b.txt");
        assert_eq!(file_name("http://h/dir/", None), "dir");
        assert_eq!(file_name("http://h/", Some(&cd)), "pkg.tar.gz");
        assert_eq!(file_name("http://h/", None), "__unnamed__");
        assert_eq!(file_name("http://h/a/..", None), "__unnamed__");
        let evil = header::HeaderValue::from_static("attachment; filename=\"../../etc/x\"");
        assert_eq!(file_name("http://h/", Some(&evil)), "x");
        let dots = header::HeaderValue::from_static("attachment; filename=..");
        assert_eq!(file_name("http://h", Some(&dots)), "__unnamed__");
    }

    #[test]
    fn only_https_to_http_is_a_downgrade() {
        assert!(is_downgrade("https://a/x", "http://a/x"));
        assert!(is_downgrade("HTTPS://a/x", "ftp://a/x"));
        assert!(!is_downgrade("https://a/x", "https://b/y"));
        assert!(!is_downgrade("http://a/x", "https://b/y"));
        assert!(!is_downgrade("http://a/x", "http://b/y"));
    }

    #[test]
    fn checksums_parse() {
        let hex = "ab".repeat(32);
        assert_eq!(
            Checksum::parse(&format!("sha256:{hex}"))
                .unwrap()
                .to_string(),
            format!("sha256:{hex}")
        );
        assert!(Checksum::parse(&format!("sha384:{}", "0".repeat(96))).is_ok());
        for bad in [
            "sha256:abc",
            "md5:00",
            &hex,
            &format!("sha256:{}", "zz".repeat(32)),
        ] {
            assert!(Checksum::parse(bad).is_err(), "{bad}");
        }
    }

    /// A loopback server answering each connection with the next of
    /// `answers` (raw bytes, after reading the request head); `None` holds
    /// the connection open without answering.
    fn serve(answers: Vec<Option<Vec<u8>>>) -> (u16, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let mut held = Vec::new();
            for a in answers {
                let (mut c, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = c.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                match a {
                    Some(bytes) => {
                        let _ = c.write_all(&bytes);
                    }
                    None => held.push(c),
                }
            }
            // Held connections close when the client gave up on them.
            for mut c in held {
                let _ = c.read(&mut [0u8; 1]);
            }
        });
        (port, h)
    }

    /// A loopback server answering one request with `answer` after
    /// handing the request head to `check`.
    fn serve_checked(
        answer: Vec<u8>,
        check: impl FnOnce(&str) + Send + 'static,
    ) -> (u16, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "request ended early");
                req.extend_from_slice(&buf[..n]);
            }
            check(&String::from_utf8_lossy(&req));
            c.write_all(&answer).unwrap();
        });
        (port, h)
    }

    fn fetch(f: &Fetcher, url: &str, dest: &Path, sum: Option<&Checksum>) -> Result<Fetched> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f.fetch(url, dest, sum))
    }

    /// A CA (PEM) and a certificate with its key for 127.0.0.1 signed by it.
    fn pki() -> (
        String,
        rustls_pki_types::CertificateDer<'static>,
        rustls_pki_types::PrivateKeyDer<'static>,
    ) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        (
            ca.pem(),
            cert.der().clone(),
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    #[test]
    fn https_with_a_given_ca_and_no_downgrade() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = pki();
        std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            tokio::spawn(async move {
                loop {
                    let (tcp, _) = l.accept().await.unwrap();
                    // A client that does not trust the CA hangs up here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        continue;
                    };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = tls.read(&mut buf).await.unwrap();
                        assert!(n > 0, "request ended early");
                        req.extend_from_slice(&buf[..n]);
                    }
                    let answer: &[u8] = if req.starts_with(b"GET /down ") {
                        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/plain\r\nContent-Length: 0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsecure\n"
                    };
                    tls.write_all(answer).await.unwrap();
                    tls.shutdown().await.unwrap();
                }
            });
            let trusting = Fetcher::new(&[dir.path().join("ca.pem")], Duration::from_secs(10))
                .unwrap();
            let dest = dir.path().join("secure");
            let url = format!("https://127.0.0.1:{port}/file");
            trusting.fetch(&url, &dest, None).await.unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), b"secure\n");

            let e = trusting
                .fetch(
                    &format!("https://127.0.0.1:{port}/down"),
                    &dir.path().join("down"),
                    None,
                )
                .await
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "ADD https://127.0.0.1:{port}/down: refusing the redirect from https to http://127.0.0.1:9/plain"
                )
            );

            let system_only = Fetcher::new(&[], Duration::from_secs(10)).unwrap();
            let e = system_only
                .fetch(&url, &dir.path().join("untrusted"), None)
                .await
                .unwrap_err();
            assert!(
                e.to_string().starts_with(&format!(
                    "ADD {url}: TLS handshake with 127.0.0.1:{port} failed: the server's certificate is not trusted"
                )),
                "{e}"
            );
            assert!(!dir.path().join("untrusted").exists());
        });
    }

    #[test]
    fn chunked_short_redirect_loop_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fetcher::new(&[], Duration::from_millis(300)).unwrap();

        // Chunked, after one relative redirect; Last-Modified sets mtime.
        let (port, h) = serve(vec![
            Some(b"HTTP/1.1 302 Found\r\nLocation: /real/file.bin\r\nContent-Length: 0\r\n\r\n".to_vec()),
            Some(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec()),
        ]);
        let dest = dir.path().join("a");
        let got = fetch(&f, &format!("http://127.0.0.1:{port}/start"), &dest, None).unwrap();
        h.join().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello world");
        // Named after the URL asked for, not the redirect target.
        assert_eq!(got.name, "start");
        assert_eq!(got.size, 11);
        assert_eq!(
            got.digest,
            format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(b"hello world"))
            )
        );
        let meta = std::fs::metadata(&dest).unwrap();
        assert_eq!(
            meta.modified().unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
        );
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }

        // User information goes out as basic authentication.
        let (port, h) = serve_checked(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            move |req| {
                assert!(
                    req.contains("authorization: Basic dXNlcjpwIHc=\r\n"),
                    "{req}"
                );
                assert!(req.contains("host: 127.0.0.1:"), "{req}");
                assert!(!req.contains("user:p"), "{req}");
            },
        );
        fetch(
            &f,
            &format!("http://user:p%20w@127.0.0.1:{port}/auth"),
            &dir.path().join("auth"),
            None,
        )
        .unwrap();
        h.join().unwrap();

        // A body shorter than announced.
        let (port, h) = serve(vec![Some(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly this"
                .to_vec(),
        )]);
        let e = fetch(
            &f,
            &format!("http://127.0.0.1:{port}/f"),
            &dir.path().join("b"),
            None,
        )
        .unwrap_err();
        h.join().unwrap();
        assert!(
            e.to_string()
                .contains("the body ended after 9 of the 100 bytes announced"),
            "{e}"
        );
        assert!(!dir.path().join("b").exists(), "a partial download stays");

        // A redirect loop stops after MAX_REDIRECTS.
        let answers = (0..=MAX_REDIRECTS)
            .map(|_| {
                Some(
                    b"HTTP/1.1 301 Moved\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n".to_vec(),
                )
            })
            .collect();
        let (port, h) = serve(answers);
        let e = fetch(
            &f,
            &format!("http://127.0.0.1:{port}/x"),
            &dir.path().join("c"),
            None,
        )
        .unwrap_err();
        h.join().unwrap();
        assert!(matches!(e, Error::TooManyRedirects { .. }), "{e}");

        // An answer that never comes.
        let (port, h) = serve(vec![None]);
        let e = fetch(
            &f,
            &format!("http://127.0.0.1:{port}/slow"),
            &dir.path().join("d"),
            None,
        )
        .unwrap_err();
        h.join().unwrap();
        assert!(
            e.to_string().ends_with(
                "no progress from 127.0.0.1:PORT in 300ms while waiting for the response"
                    .replace("PORT", &port.to_string())
                    .as_str()
            ),
            "{e}"
        );
        assert!(!dir.path().join("d").exists());

        // Not an HTTP URL at all.
        let e = fetch(&f, "ftp://127.0.0.1/x", &dir.path().join("e"), None).unwrap_err();
        assert!(matches!(e, Error::Scheme { .. }), "{e}");
    }
}
