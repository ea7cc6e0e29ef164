//! Downloading the pictures users send on chat platforms (a `PicUrl`), without letting such a
//! URL reach the daemon's own network (SSRF).
//!
//! A picture URL comes from outside, so before any byte is sent:
//! - only `http` and `https`;
//! - the host must be a public address: loopback, private (RFC 1918, CGNAT 100.64/10),
//!   link-local, unique-local, multicast, unspecified, broadcast, documentation, benchmarking
//!   and reserved ranges are refused, in every spelling: the URL parser turns `2130706433`,
//!   `0x7f000001`, `0177.0.0.1` and `127.1` into `127.0.0.1`, and IPv6 forms that carry an
//!   IPv4 address (`::ffff:a.b.c.d`, `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are
//!   judged by that address;
//! - a host name is resolved once, by this module's resolver, which drops every address that
//!   is not public and hands the rest to the connection: what is connected to is what was
//!   checked, so a name that resolves differently the second time (DNS rebinding) gains
//!   nothing;
//! - redirects are followed by hand, at most [`MAX_REDIRECTS`], each hop checked like the
//!   first; no proxy from the environment is used (a proxy would resolve the name itself).
//!
//! Hosts on the operator's list (`[bot] picture_trusted_hosts`, e.g. a private object store)
//! skip the address check. The size limit and the sniffing of the picture type are kept here
//! too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Redirects followed per picture at most.
pub const MAX_REDIRECTS: usize = 5;

/// Why a picture was not fetched. The text never carries the URL's query (it may hold a
/// platform's token).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL, or a redirect's `Location`, is unusable (not http/https, no host, unparsable).
    #[error("unusable URL: {0}")]
    BadUrl(String),
    /// The host is, or resolves only to, an address that is not public.
    #[error("refused: {0} is not a public address")]
    Refused(String),
    /// More than [`MAX_REDIRECTS`] redirects.
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    /// The download failed (connection, timeout, an error status).
    #[error("{0}")]
    Failed(String),
    /// Larger than the limit.
    #[error("larger than {0} bytes")]
    TooLarge(usize),
    /// Neither the bytes nor the content type say picture.
    #[error("not a picture")]
    NotAPicture,
}

/// Downloads pictures users send. Cheap to share; built again when the trusted hosts change.
pub struct PictureFetcher {
    client: reqwest::Client,
    trusted: Arc<Trusted>,
}

/// Host names and addresses the operator trusts, normalised (lower case, no trailing dot, no
/// IPv6 brackets).
#[derive(Debug, Default, PartialEq, Eq)]
struct Trusted(Vec<String>);

impl Trusted {
    fn new(hosts: &[String]) -> Self {
        Self(hosts.iter().map(|h| normalize_host(h)).collect())
    }

    fn contains(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.0.contains(&host)
    }
}

fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

impl PictureFetcher {
    /// A fetcher that trusts `trusted_hosts` (names or addresses, matched exactly) and checks
    /// every other host.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots).
    pub fn new(trusted_hosts: &[String]) -> Result<Self, FetchError> {
        let trusted = Arc::new(Trusted::new(trusted_hosts));
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(PublicOnly {
                trusted: trusted.clone(),
            }))
            .build()
            .map_err(|e| FetchError::Failed(format!("building the HTTP client: {e}")))?;
        Ok(Self { client, trusted })
    }

    /// Whether this fetcher was built for `trusted_hosts`.
    #[must_use]
    pub fn trusts(&self, trusted_hosts: &[String]) -> bool {
        *self.trusted == Trusted::new(trusted_hosts)
    }

    /// Downloads the picture at `url` (at most `max_bytes`) as a `data:` URL for the model.
    ///
    /// # Errors
    /// See [`FetchError`].
    pub async fn fetch(&self, url: &str, max_bytes: usize) -> Result<String, FetchError> {
        let mut url = Url::parse(url).map_err(|e| FetchError::BadUrl(e.to_string()))?;
        let mut redirects = 0;
        let mut res = loop {
            self.check_url(&url)?;
            let res = self
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| match refusal(&e) {
                    Some(refused) => FetchError::Refused(refused),
                    None => FetchError::Failed(describe(&e)),
                })?;
            if !res.status().is_redirection() {
                break res;
            }
            let Some(location) = res
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Err(FetchError::Failed(format!(
                    "HTTP {} without a Location",
                    res.status()
                )));
            };
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(FetchError::TooManyRedirects);
            }
            url = url
                .join(location)
                .map_err(|e| FetchError::BadUrl(format!("redirect: {e}")))?;
        };
        if !res.status().is_success() {
            return Err(FetchError::Failed(format!("HTTP {}", res.status())));
        }
        if res.content_length().is_some_and(|n| n > max_bytes as u64) {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let declared = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        let mut body = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| FetchError::Failed(format!("download failed: {}", describe(&e))))?
        {
            if body.len() + chunk.len() > max_bytes {
                return Err(FetchError::TooLarge(max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        // Platforms often say application/octet-stream: trust the bytes over the header.
        let mime = picture_type(&body)
            .map(str::to_owned)
            .or(declared.filter(|d| d.starts_with("image/")))
            .ok_or(FetchError::NotAPicture)?;
        Ok(format!(
            "data:{mime};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&body)
        ))
    }

    /// The checks made on a URL before it is requested: the scheme, and an address written
    /// in the URL (names are checked by the resolver, on the addresses it returns).
    fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::BadUrl(format!(
                "scheme {} (only http and https)",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| FetchError::BadUrl("no host".to_owned()))?;
        // The URL parser has already read numeric hosts of http(s) URLs (decimal, hex, octal,
        // short forms) into a canonical address; IPv6 ones come in brackets. Names are left to
        // the resolver.
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return Ok(());
        };
        if self.trusted.contains(&ip.to_string()) || is_public(ip) {
            Ok(())
        } else {
            Err(FetchError::Refused(ip.to_string()))
        }
    }
}

/// Resolves names for the picture client, keeping only public addresses (all of them for a
/// trusted host). The connection uses exactly what this returns.
struct PublicOnly {
    trusted: Arc<Trusted>,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let trusted = self.trusted.contains(&host);
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = keep_public(&host, found, trusted)?;
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// The addresses of `host` that may be connected to: all for a trusted host, else the public
/// ones; an error when none is left.
fn keep_public(
    host: &str,
    found: Vec<SocketAddr>,
    trusted: bool,
) -> Result<Vec<SocketAddr>, FetchError> {
    if trusted {
        return Ok(found);
    }
    let kept: Vec<SocketAddr> = found
        .iter()
        .copied()
        .filter(|a| is_public(a.ip()))
        .collect();
    if kept.is_empty() {
        return Err(FetchError::Refused(match found.first() {
            Some(a) => format!("{host} ({})", a.ip()),
            None => host.to_owned(),
        }));
    }
    Ok(kept)
}

/// Whether `ip` is an address on the public internet a picture may be fetched from.
#[must_use]
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", 0.0.0.0
        || a == 10 // private
        || a == 127 // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 169 && b == 254) // link-local
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation (TEST-NET-1)
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (deprecated)
        || (a == 192 && b == 168) // private
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation (TEST-NET-2)
        || (a == 203 && b == 0 && c == 113) // documentation (TEST-NET-3)
        || a >= 224) // multicast 224/4, reserved 240/4, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4-mapped (::ffff:a.b.c.d): the IPv4 address is what is reached.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64 (64:ff9b::/96) carries the IPv4 address it translates to.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    // 6to4 (2002::/16) carries the IPv4 address of the tunnel's end.
    if s[0] == 0x2002 {
        return is_public_v4(embedded_v4(s[1], s[2]));
    }
    // Only global unicast (2000::/3) is public; this refuses ::, ::1, IPv4-compatible
    // ::a.b.c.d, the local NAT64 64:ff9b:1::/48, discard 100::/64, unique-local fc00::/7,
    // link-local fe80::/10, site-local fec0::/10 and multicast ff00::/8.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    // IETF protocol assignments 2001::/23 (Teredo, ORCHID, benchmarking), documentation
    // 2001:db8::/32 and 3fff::/20.
    let ietf = s[0] == 0x2001 && s[1] < 0x0200;
    let documentation = (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] < 0x1000);
    !ietf && !documentation
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// A reqwest error without its URL (a platform's picture URL may carry a token).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    }
}

/// What the resolver refused, when that is why the request failed.
fn refusal(e: &reqwest::Error) -> Option<String> {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(FetchError::Refused(what)) = s.downcast_ref::<FetchError>() {
            return Some(what.clone());
        }
        source = s.source();
    }
    None
}

/// The picture type of `bytes` from its first bytes (JPEG, PNG, GIF, WebP).
fn picture_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n-rest-of-a-picture";

    /// A one-route HTTP server on `ip`: answers every request with `response` (raw head, then
    /// `body`) and counts requests. Returns its port and the counter.
    async fn server(ip: &str, head: String, body: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (head, body) = (head.clone(), body.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                });
            }
        });
        (port, hits)
    }

    async fn picture_server(ip: &str) -> (u16, Arc<AtomicUsize>) {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            PNG.len()
        );
        server(ip, head, PNG.to_vec()).await
    }

    async fn redirect_server(ip: &str, location: &str) -> u16 {
        let head = format!(
            "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        server(ip, head, Vec::new()).await.0
    }

    fn trusting(hosts: &[&str]) -> PictureFetcher {
        PictureFetcher::new(&hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn addresses_that_are_not_public_are_refused() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must be refused");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "223.255.255.254",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2400:cb00::1",
            "2606:4700::1111",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn every_spelling_of_an_internal_address_is_refused_before_connecting() {
        // The internal service listens on 127.0.0.2; it must never see a request.
        let (port, hits) = picture_server("127.0.0.2").await;
        let f = trusting(&[]);
        for host in [
            "127.0.0.2",
            "2130706434",
            "0x7f000002",
            "0x7F.0.0.2",
            "0177.0.0.2",
            "0177.0.0.02",
            "127.0.2",
            "127.2",
            "017700000002",
            "[::ffff:127.0.0.2]",
            "[::ffff:7f00:2]",
            "[::127.0.0.2]",
            "[64:ff9b::7f00:2]",
            "[::1]",
            "0",
            "0.0.0.0",
            "localhost",
        ] {
            let url = format!("http://{host}:{port}/p.png");
            match f.fetch(&url, 1024).await {
                Err(FetchError::Refused(_) | FetchError::BadUrl(_)) => {}
                other => panic!("{url}: {other:?}"),
            }
        }
        // A trailing dot may not resolve at all here; it must not connect either way.
        let url = format!("http://LOCALHOST.:{port}/p.png");
        assert!(f.fetch(&url, 1024).await.is_err(), "{url}");
        for url in [
            "file:///etc/passwd".to_owned(),
            format!("ftp://127.0.0.2:{port}/"),
            format!("gopher://127.0.0.2:{port}/"),
            "http://[::1/p".to_owned(),
        ] {
            assert!(
                matches!(f.fetch(&url, 1024).await, Err(FetchError::BadUrl(_))),
                "{url}"
            );
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "the internal server got a request"
        );
    }

    #[tokio::test]
    async fn trusted_hosts_are_fetched_and_their_redirects_checked() {
        let (pic_port, hits) = picture_server("127.0.0.2").await;
        // Trusted by address: fetched, type sniffed from the bytes.
        let f = trusting(&["127.0.0.2"]);
        let data = f
            .fetch(&format!("http://127.0.0.2:{pic_port}/p"), 1024)
            .await
            .unwrap();
        assert!(data.starts_with("data:image/png;base64,"), "{data}");
        assert!(matches!(
            f.fetch(&format!("http://127.0.0.2:{pic_port}/p"), 8).await,
            Err(FetchError::TooLarge(8))
        ));
        // Trusted by name (resolved, every address allowed).
        let (local_port, _) = picture_server("127.0.0.1").await;
        let f = trusting(&["LocalHost"]);
        assert!(
            f.fetch(&format!("http://localhost:{local_port}/p"), 1024)
                .await
                .is_ok()
        );
        // A trusted host's redirect to an untrusted internal one is refused, in any spelling;
        // a redirect to a trusted one is followed.
        let before = hits.load(Ordering::SeqCst);
        let f = trusting(&["127.0.0.1"]);
        for target in [
            format!("http://127.0.0.2:{pic_port}/p"),
            format!("http://2130706434:{pic_port}/p"),
            format!("http://[::ffff:127.0.0.2]:{pic_port}/p"),
            format!("http://localhost:{pic_port}/p"),
        ] {
            let hop = redirect_server("127.0.0.1", &target).await;
            let got = f
                .fetch(&format!("http://127.0.0.1:{hop}/start"), 1024)
                .await;
            assert!(
                matches!(got, Err(FetchError::Refused(_))),
                "{target}: {got:?}"
            );
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            before,
            "the redirect reached it"
        );
        let hop = redirect_server("127.0.0.1", &format!("http://127.0.0.1:{local_port}/p")).await;
        let hop2 = redirect_server("127.0.0.1", &format!("/relative-to-{hop}")).await;
        assert!(
            f.fetch(&format!("http://127.0.0.1:{hop}/"), 1024)
                .await
                .is_ok()
        );
        assert!(matches!(
            f.fetch(&format!("http://127.0.0.1:{hop2}/"), 1024).await,
            Err(FetchError::TooManyRedirects)
        ));
    }

    #[test]
    fn resolved_names_keep_only_public_addresses() {
        let addr = |s: &str| SocketAddr::new(s.parse().unwrap(), 0);
        // A name resolving to a public and an internal address connects to the public one only.
        let kept = keep_public(
            "mixed.example",
            vec![addr("10.0.0.1"), addr("8.8.8.8"), addr("::1")],
            false,
        )
        .unwrap();
        assert_eq!(kept, vec![addr("8.8.8.8")]);
        assert!(matches!(
            keep_public("rebind.example", vec![addr("127.0.0.1")], false),
            Err(FetchError::Refused(_))
        ));
        assert!(matches!(
            keep_public("none.example", vec![], false),
            Err(FetchError::Refused(_))
        ));
        assert_eq!(
            keep_public("store.internal", vec![addr("10.0.0.1")], true).unwrap(),
            vec![addr("10.0.0.1")]
        );
    }

    #[test]
    fn trusted_hosts_are_normalised() {
        let t = Trusted::new(&["Store.Internal.".into(), "[::1]".into()]);
        assert!(t.contains("store.internal"));
        assert!(t.contains("STORE.internal."));
        assert!(t.contains("::1"));
        assert!(!t.contains("other.internal"));
        assert!(trusting(&["a"]).trusts(&["A".into()]));
        assert!(!trusting(&["a"]).trusts(&[]));
    }
}
