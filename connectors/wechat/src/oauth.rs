//! Official Account web authorization (网页授权, OAuth 2.0): the authorize
//! URL, the code exchange at `sns/oauth2/access_token` and `sns/userinfo`.
//!
//! The access_token of web authorization belongs to one user and one
//! login; it is **not** the account's API access_token (`cgi-bin` token of
//! [`MpClient::access_token`]). It is never cached here and never mixed
//! with that cache: each exchange returns it to the caller, who normally
//! drops it after reading the openid (or the nickname).

use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::MpClient;
use crate::client::{WechatError, send_limited};

/// Longest OAuth `code` sent to WeChat, in bytes. Real codes are 32
/// characters; the cap only keeps garbage out of the request.
const MAX_CODE_BYTES: usize = 512;

/// The errcode a locally refused code gets: WeChat's own "invalid code",
/// so that callers treat a malformed code like any other bad code.
const INVALID_CODE: i64 = 40029;

/// The answer of a successful code exchange.
///
/// `Debug` leaves out the access_token.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthToken {
    /// The user's openid under this account's AppID: the same openid the
    /// account's chat messages carry.
    pub openid: String,
    /// The unionid, present only when the account is bound to an Open
    /// Platform account.
    pub unionid: Option<String>,
    /// The granted scope (`snsapi_base` or `snsapi_userinfo`).
    pub scope: String,
    /// The web authorization access_token, good for [`MpClient::oauth_user_info`]
    /// only. Not the account's API token: never cache or reuse it as one.
    pub access_token: String,
    /// `is_snapshotuser: 1`: a visitor of a "snapshot page" (a preview
    /// inside Moments) with a virtual openid. Log nobody in for it.
    pub is_snapshot_user: bool,
}

impl fmt::Debug for OAuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthToken")
            .field("openid", &self.openid)
            .field("unionid", &self.unionid)
            .field("scope", &self.scope)
            .field("is_snapshot_user", &self.is_snapshot_user)
            .finish_non_exhaustive()
    }
}

/// What `sns/userinfo` tells about a user (scope `snsapi_userinfo`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OAuthUserInfo {
    /// The user's nickname, if WeChat gave one.
    pub nickname: Option<String>,
    /// The unionid, when the account is bound to an Open Platform account.
    pub unionid: Option<String>,
}

/// The body of `sns/oauth2/access_token`: a token or an error.
#[derive(Deserialize)]
struct TokenBody {
    errcode: Option<i64>,
    errmsg: Option<String>,
    access_token: Option<String>,
    openid: Option<String>,
    scope: Option<String>,
    unionid: Option<String>,
    /// `1` for a snapshot-page visitor; accepted as a number or a boolean.
    is_snapshotuser: Option<serde_json::Value>,
}

/// The body of `sns/userinfo`.
#[derive(Deserialize)]
struct UserInfoBody {
    errcode: Option<i64>,
    errmsg: Option<String>,
    openid: Option<String>,
    nickname: Option<String>,
    unionid: Option<String>,
}

impl WechatError {
    /// 40029 (invalid code, including a code refused locally as malformed)
    /// or 40163 (code already used): the user should simply authorize
    /// again; nothing is wrong with the account's settings.
    #[must_use]
    pub fn is_oauth_code_invalid(&self) -> bool {
        matches!(self.errcode(), Some(40029 | 40163))
    }
}

impl MpClient {
    /// Exchanges a web authorization `code` for the user's openid:
    /// `GET {api_base}/sns/oauth2/access_token?appid=..&secret=..&code=..&grant_type=authorization_code`.
    ///
    /// A code that is empty, longer than 512 bytes or contains control
    /// characters is refused without a request, as [`WechatError::Api`]
    /// with errcode 40029 (WeChat's "invalid code").
    ///
    /// # Errors
    /// [`WechatError::Api`] with WeChat's errcode (40029 invalid code, 40163
    /// code used, 40125 bad secret...; see
    /// [`WechatError::is_oauth_code_invalid`]), [`WechatError::Http`],
    /// [`WechatError::Decode`] for an answer that is not the expected JSON
    /// (never quoted: it would hold the token).
    pub async fn oauth_exchange(&self, code: &str) -> Result<OAuthToken, WechatError> {
        if code.is_empty() || code.len() > MAX_CODE_BYTES || code.chars().any(char::is_control) {
            return Err(WechatError::Api {
                errcode: INVALID_CODE,
                errmsg:
                    "invalid code (refused before sending: empty, too long or control characters)"
                        .into(),
            });
        }
        let (http, api_base, secret) = self.oauth_parts();
        let url = format!("{api_base}/sns/oauth2/access_token");
        let req = http.get(&url).query(&[
            ("appid", self.app_id()),
            ("secret", secret),
            ("code", code),
            ("grant_type", "authorization_code"),
        ]);
        let body: TokenBody = decode_secret(&send_limited(req).await?, "sns/oauth2/access_token")?;
        check_errcode(body.errcode, body.errmsg)?;
        let openid = body
            .openid
            .filter(|o| is_visible_ascii(o, 128))
            .ok_or_else(|| WechatError::Decode("access_token answer has no valid openid".into()))?;
        let access_token = body
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| WechatError::Decode("access_token answer has no access_token".into()))?;
        let is_snapshot_user = match body.is_snapshotuser {
            Some(serde_json::Value::Number(n)) => n.as_i64() == Some(1),
            Some(serde_json::Value::Bool(b)) => b,
            _ => false,
        };
        Ok(OAuthToken {
            openid,
            unionid: body.unionid.filter(|u| !u.is_empty()),
            scope: body.scope.unwrap_or_default(),
            access_token,
            is_snapshot_user,
        })
    }

    /// The user's nickname (and unionid) with a web authorization token of
    /// scope `snsapi_userinfo`:
    /// `GET {api_base}/sns/userinfo?access_token=..&openid=..&lang=zh_CN`.
    ///
    /// # Errors
    /// As [`Self::oauth_exchange`]; an answer about another openid is
    /// [`WechatError::Decode`]. Malformed arguments are
    /// [`WechatError::Decode`] without a request.
    pub async fn oauth_user_info(
        &self,
        access_token: &str,
        openid: &str,
    ) -> Result<OAuthUserInfo, WechatError> {
        if !is_visible_ascii(access_token, 1024) || !is_visible_ascii(openid, 128) {
            return Err(WechatError::Decode(
                "oauth access_token or openid is not visible ASCII of sane length".into(),
            ));
        }
        let (http, api_base, _) = self.oauth_parts();
        let url = format!("{api_base}/sns/userinfo");
        let req = http.get(&url).query(&[
            ("access_token", access_token),
            ("openid", openid),
            ("lang", "zh_CN"),
        ]);
        let body: UserInfoBody = decode_secret(&send_limited(req).await?, "sns/userinfo")?;
        check_errcode(body.errcode, body.errmsg)?;
        if body.openid.as_deref().is_some_and(|o| o != openid) {
            return Err(WechatError::Decode(
                "userinfo answer is about another openid".into(),
            ));
        }
        Ok(OAuthUserInfo {
            nickname: body.nickname.filter(|n| !n.is_empty()),
            unionid: body.unionid.filter(|u| !u.is_empty()),
        })
    }
}

/// The authorize URL the browser is sent to:
/// `{oauth_base}/connect/oauth2/authorize?appid=..&redirect_uri=<urlencoded>&response_type=code&scope=..&state=..#wechat_redirect`.
///
/// Every value is percent-encoded (RFC 3986 unreserved characters kept), so
/// the usual appids, scopes and `[A-Za-z0-9]` states appear unchanged.
/// `#wechat_redirect` is required by WeChat, also after a 302.
#[must_use]
pub fn oauth_authorize_url(
    oauth_base: &str,
    app_id: &str,
    redirect_uri: &str,
    scope: &str,
    state: &str,
) -> String {
    format!(
        "{}/connect/oauth2/authorize?appid={}&redirect_uri={}&response_type=code&scope={}&state={}#wechat_redirect",
        oauth_base.trim_end_matches('/'),
        percent_encode(app_id),
        percent_encode(redirect_uri),
        percent_encode(scope),
        percent_encode(state),
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`), like `encodeURIComponent` (which also keeps
/// `!'()*`).
fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// 1..=`max` bytes of visible ASCII.
fn is_visible_ascii(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A non-zero errcode is an error.
fn check_errcode(errcode: Option<i64>, errmsg: Option<String>) -> Result<(), WechatError> {
    match errcode {
        None | Some(0) => Ok(()),
        Some(errcode) => Err(WechatError::Api {
            errcode,
            errmsg: errmsg.unwrap_or_default(),
        }),
    }
}

/// Decodes an answer that may hold a token: the error names only the kind
/// of problem, never the body.
fn decode_secret<T: DeserializeOwned>(bytes: &[u8], endpoint: &str) -> Result<T, WechatError> {
    serde_json::from_slice(bytes).map_err(|e| {
        WechatError::Decode(format!(
            "{endpoint} response is not the expected JSON ({:?})",
            e.classify()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(
            percent_encode("https://a.example/cb?x=1&y=2 #"),
            "https%3A%2F%2Fa.example%2Fcb%3Fx%3D1%26y%3D2%20%23"
        );
        assert_eq!(percent_encode("你"), "%E4%BD%A0");
    }

    #[test]
    fn code_errors() {
        let api = |errcode| WechatError::Api {
            errcode,
            errmsg: String::new(),
        };
        assert!(api(40029).is_oauth_code_invalid());
        assert!(api(40163).is_oauth_code_invalid());
        assert!(!api(40125).is_oauth_code_invalid());
        assert!(!WechatError::Decode("x".into()).is_oauth_code_invalid());
    }

    #[test]
    fn token_debug_hides_the_access_token() {
        let t = OAuthToken {
            openid: "o1".into(),
            unionid: None,
            scope: "snsapi_base".into(),
            access_token: "SECRET_TOKEN".into(),
            is_snapshot_user: false,
        };
        let dbg = format!("{t:?}");
        assert!(dbg.contains("o1") && !dbg.contains("SECRET_TOKEN"), "{dbg}");
    }
}
