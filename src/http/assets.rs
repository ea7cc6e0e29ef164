//! Files embedded in the binary and served to browsers (the chat page's and the console's):
//! each is kept plain and gzipped (compressed once, when the routes are built), sent gzipped to
//! clients that take it, with the page's content-security policy and no-cache (the binary is
//! the version: a restart with a new build serves new files).

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// One embedded file: its text, the same gzipped, and the headers it is sent with.
#[derive(Clone)]
pub struct Asset {
    body: &'static str,
    gzip: Option<Bytes>,
    content_type: &'static str,
    csp: &'static str,
    referrer_policy: &'static str,
}

impl Asset {
    /// A file of `content_type`, sent with the content-security policy `csp` and
    /// `Referrer-Policy: referrer_policy`.
    #[must_use]
    pub fn new(
        body: &'static str,
        content_type: &'static str,
        csp: &'static str,
        referrer_policy: &'static str,
    ) -> Self {
        Self {
            body,
            gzip: gzip(body.as_bytes()),
            content_type,
            csp,
            referrer_policy,
        }
    }

    /// The file's size gzipped (its plain size if it could not be compressed).
    #[must_use]
    pub fn gzipped_len(&self) -> usize {
        self.gzip.as_ref().map_or(self.body.len(), Bytes::len)
    }

    /// The response to a `GET` with request headers `headers`.
    pub fn respond(&self, headers: &HeaderMap) -> Response {
        let mut res = match &self.gzip {
            Some(gz) if accepts_gzip(headers) => {
                let mut res = gz.clone().into_response();
                res.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                res
            }
            _ => self.body.into_response(),
        };
        let h = res.headers_mut();
        // Caches keep the plain and the gzipped file apart.
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(self.csp),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static(self.referrer_policy),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        res
    }
}

/// `data` gzipped at the best level (`None` if that fails, and the plain file is sent).
fn gzip(data: &[u8]) -> Option<Bytes> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).ok()?;
    enc.finish().ok().map(Bytes::from)
}

/// Whether the client takes gzip (`Accept-Encoding`, with a `q` above zero).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !q_zero
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn gzip_only_for_clients_that_take_it() {
        assert!(accepts_gzip(&with("gzip, deflate, br")));
        assert!(accepts_gzip(&with("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(&with("*")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("br, deflate")));
        assert!(!accepts_gzip(&with("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn gzip_unpacks_to_the_file() {
        use std::io::Read;
        let body = "chatrelay ".repeat(200);
        let gz = gzip(body.as_bytes()).unwrap();
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, body);
        assert!(gz.len() < body.len() / 10);
    }

    #[test]
    fn the_answer_is_gzipped_only_when_asked() {
        let a = Asset::new(
            "x".repeat(500).leak(),
            "text/plain",
            "default-src 'self'",
            "no-referrer",
        );
        let plain = a.respond(&HeaderMap::new());
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        let gz = a.respond(&with("gzip"));
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(gz.headers()[header::VARY], "accept-encoding");
        assert_eq!(gz.headers()[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(
            gz.headers()[header::CONTENT_SECURITY_POLICY],
            "default-src 'self'"
        );
    }
}
