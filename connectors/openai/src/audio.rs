//! Speech to text: `POST {base_url}/audio/transcriptions`, a multipart upload of the audio
//! file with the model's name, answered with `{"text": ...}` (`response_format=json`).
//!
//! The multipart body is built here, whole, rather than with a streaming form: a retry (or a
//! fallback upstream) must send the same bytes again, and voice messages are small (WeChat's
//! are at most 2 MiB; the API takes at most 25 MiB). The size is checked before anything is
//! sent.
//!
//! The server side of the same format is here too: [`parse_upload`] reads an upload (the
//! daemon's own `/v1/audio/transcriptions`), refusing anything malformed or oversized.

use std::collections::HashMap;

use bytes::Bytes;
use reqwest::Method;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::client::{ACCEPT_JSON, Client, decode_json_response, read_full};
use crate::error::Error;

/// The largest upload the transcription API takes (OpenAI's limit: 25 MB).
pub const MAX_UPLOAD_BYTES: usize = 25 * 1024 * 1024;

/// One audio file to transcribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptionRequest {
    /// The transcription model (`whisper-1`, `gpt-4o-mini-transcribe`...).
    pub model: String,
    /// The audio.
    pub file: Bytes,
    /// The file's name as uploaded; its extension tells the server the format
    /// (`voice.wav`, `voice.ogg`).
    pub filename: String,
    /// The file's MIME type (`audio/wav`, `audio/ogg`).
    pub content_type: String,
    /// The language spoken (ISO-639-1, `zh`), when known: it helps accuracy.
    pub language: Option<String>,
    /// The largest file sent; a larger one is refused before any request. Default
    /// [`MAX_UPLOAD_BYTES`].
    pub max_bytes: usize,
}

impl TranscriptionRequest {
    /// A request for `file`, named and typed after its `format` (a file extension: `wav`,
    /// `ogg`, `mp3`...).
    #[must_use]
    pub fn new(model: impl Into<String>, file: impl Into<Bytes>, format: &str) -> Self {
        let ext: String = format
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect::<String>()
            .to_ascii_lowercase();
        let ext = if ext.is_empty() {
            "bin".to_owned()
        } else {
            ext
        };
        Self {
            model: model.into(),
            file: file.into(),
            content_type: content_type_of(&ext).to_owned(),
            filename: format!("voice.{ext}"),
            language: None,
            max_bytes: MAX_UPLOAD_BYTES,
        }
    }

    /// Refuses what must not be sent: an empty or too large file, a name or type that would
    /// break the multipart framing.
    pub fn check(&self) -> Result<(), AudioError> {
        if self.file.is_empty() {
            return Err(AudioError::Empty);
        }
        let max = self.max_bytes.min(MAX_UPLOAD_BYTES);
        if self.file.len() > max {
            return Err(AudioError::TooLarge {
                size: self.file.len(),
                max,
            });
        }
        let unsafe_text = |s: &str| s.is_empty() || s.chars().any(|c| c.is_control() || c == '"');
        if unsafe_text(&self.filename) || unsafe_text(&self.content_type) {
            return Err(AudioError::InvalidFile(
                "file name and content type must be non-empty, without quotes or control characters"
                    .into(),
            ));
        }
        if self.model.trim().is_empty() || unsafe_text(&self.model) {
            return Err(AudioError::InvalidFile("the model name is unusable".into()));
        }
        Ok(())
    }
}

/// The MIME type of an audio file extension (what OpenAI's API accepts, plus WeChat's).
#[must_use]
pub fn content_type_of(ext: &str) -> &'static str {
    match ext {
        "wav" => "audio/wav",
        "mp3" | "mpga" | "mpeg" => "audio/mpeg",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "webm" => "audio/webm",
        "m4a" | "mp4" => "audio/mp4",
        "flac" => "audio/flac",
        "amr" => "audio/amr",
        "speex" | "spx" => "audio/speex",
        _ => "application/octet-stream",
    }
}

/// What the server heard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcription {
    /// The transcript.
    #[serde(default)]
    pub text: String,
    /// Other fields (`usage`, `duration`, `language`...), kept as sent.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Why a transcription failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// The file is larger than the request's (or the API's) limit; nothing was sent.
    #[error("audio file of {size} bytes is larger than the {max}-byte limit")]
    TooLarge {
        /// The file's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The file is empty; nothing was sent.
    #[error("the audio file is empty")]
    Empty,
    /// The request cannot be framed (file name, content type, model).
    #[error("invalid transcription request: {0}")]
    InvalidFile(String),
    /// The server (or the way to it) failed, after the client's retries.
    #[error(transparent)]
    Api(#[from] Error),
}

impl Client {
    /// Transcribes an audio file (`POST {base_url}/audio/transcriptions`), after checking its
    /// size, with the same timeouts, retries and error mapping as [`Client::chat`].
    pub async fn transcribe(
        &self,
        req: &TranscriptionRequest,
    ) -> Result<Transcription, AudioError> {
        req.check()?;
        Ok(self.post_transcription(req).await?)
    }

    /// The request itself, for a request already [checked](TranscriptionRequest::check).
    pub(crate) async fn post_transcription(
        &self,
        req: &TranscriptionRequest,
    ) -> Result<Transcription, Error> {
        let boundary = self.boundary_for(&req.file);
        let body = multipart_body(req, &boundary);
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let (body, request_id) = self
            .execute_as(
                Method::POST,
                "/audio/transcriptions",
                Some(body),
                &content_type,
                ACCEPT_JSON,
                read_full,
            )
            .await?;
        let t: Transcription = decode_json_response(&body, request_id)?;
        Ok(t)
    }

    /// A random multipart boundary that does not occur in `file`.
    fn boundary_for(&self, file: &[u8]) -> String {
        loop {
            let mut raw = [0u8; 16];
            // A failing system RNG leaves zeros; the occurrence check below still holds.
            let _ = self.rng().fill(&mut raw);
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let boundary = format!("chatrelay-{hex}");
            if !contains(file, boundary.as_bytes()) {
                return boundary;
            }
        }
    }
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The `multipart/form-data` body: `model`, `response_format=json`, the optional
/// `language`, then `file`.
fn multipart_body(req: &TranscriptionRequest, boundary: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(req.file.len() + 512);
    let mut field = |name: &str, value: &str| {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    };
    field("model", &req.model);
    field("response_format", "json");
    if let Some(lang) = req
        .language
        .as_deref()
        .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        field("language", lang);
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
            req.filename, req.content_type
        )
        .as_bytes(),
    );
    body.extend_from_slice(&req.file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

// === the server side: reading an upload ===

/// Parts in one upload at most.
const MAX_PARTS: usize = 16;
/// The longest form field other than the file.
const MAX_FIELD_BYTES: usize = 1024;
/// The longest header block of one part.
const MAX_PART_HEADER_BYTES: usize = 4096;

/// A parsed upload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upload {
    /// The `file` part's bytes.
    pub file: Option<Vec<u8>>,
    /// Its `filename`.
    pub filename: Option<String>,
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// The other (text) fields.
    pub fields: HashMap<String, String>,
}

/// The `boundary` parameter of a `multipart/form-data` content type.
fn boundary_of(content_type: &str) -> Option<&str> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= 70).then_some(v)
    })
}

/// Where `needle` first occurs in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// A `name="value"` parameter of a `Content-Disposition` header.
fn disposition_param(header: &str, name: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// Parses a `multipart/form-data` body (RFC 7578): every part's name, the file part's bytes,
/// name and type. Refuses anything malformed, more than [`MAX_PARTS`] parts, or a text field
/// longer than [`MAX_FIELD_BYTES`]; the message says what was wrong.
pub fn parse_upload(content_type: &str, body: &[u8]) -> Result<Upload, String> {
    let boundary =
        boundary_of(content_type).ok_or("the body must be multipart/form-data with a boundary")?;
    let delimiter = format!("--{boundary}");
    let next_delimiter = format!("\r\n--{boundary}");
    let mut at = find(body, delimiter.as_bytes(), 0).ok_or("no multipart boundary in the body")?
        + delimiter.len();
    let mut upload = Upload::default();
    for _ in 0..=MAX_PARTS {
        let rest = body.get(at..).unwrap_or_default();
        if rest.starts_with(b"--") {
            return Ok(upload);
        }
        let headers_start = if rest.starts_with(b"\r\n") {
            at + 2
        } else {
            return Err("a multipart boundary is not followed by a line break".into());
        };
        let headers_end = find(body, b"\r\n\r\n", headers_start)
            .filter(|&end| end - headers_start <= MAX_PART_HEADER_BYTES)
            .ok_or("a part's headers are missing or too long")?;
        let headers = std::str::from_utf8(body.get(headers_start..headers_end).unwrap_or_default())
            .map_err(|_| "a part's headers are not UTF-8")?;
        let content_start = headers_end + 4;
        let content_end = find(body, next_delimiter.as_bytes(), content_start)
            .ok_or("the body ends inside a part (no closing boundary)")?;
        let content = body.get(content_start..content_end).unwrap_or_default();
        at = content_end + next_delimiter.len();
        let mut disposition = None;
        let mut part_type = None;
        for line in headers.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("content-disposition") {
                disposition = Some(value.trim().to_owned());
            } else if name.trim().eq_ignore_ascii_case("content-type") {
                part_type = Some(value.trim().to_owned());
            }
        }
        let disposition = disposition.ok_or("a part has no Content-Disposition")?;
        let name = disposition_param(&disposition, "name").ok_or("a part has no name")?;
        if name == "file" {
            if upload.file.is_some() {
                return Err("more than one file".into());
            }
            upload.file = Some(content.to_vec());
            upload.filename = disposition_param(&disposition, "filename");
            upload.content_type = part_type;
            continue;
        }
        if content.len() > MAX_FIELD_BYTES {
            return Err(format!("the field {name:?} is too long"));
        }
        let value = String::from_utf8(content.to_vec())
            .map_err(|_| format!("the field {name:?} is not UTF-8"))?;
        upload.fields.insert(name, value);
    }
    Err(format!("more than {MAX_PARTS} parts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_after_their_format_and_checked() {
        let req = TranscriptionRequest::new("whisper-1", vec![1u8, 2, 3], "OGG");
        assert_eq!(req.filename, "voice.ogg");
        assert_eq!(req.content_type, "audio/ogg");
        assert_eq!(req.check(), Ok(()));
        let odd = TranscriptionRequest::new("whisper-1", vec![1u8], "x\"\r\n");
        assert_eq!(odd.filename, "voice.x");
        let mut big = TranscriptionRequest::new("whisper-1", vec![0u8; 11], "wav");
        big.max_bytes = 10;
        assert_eq!(big.check(), Err(AudioError::TooLarge { size: 11, max: 10 }));
        let empty = TranscriptionRequest::new("whisper-1", Vec::<u8>::new(), "wav");
        assert_eq!(empty.check(), Err(AudioError::Empty));
        let mut bad = TranscriptionRequest::new("whisper-1", vec![1u8], "wav");
        bad.filename = "a\"b".into();
        assert!(matches!(bad.check(), Err(AudioError::InvalidFile(_))));
    }

    #[test]
    fn the_body_carries_every_field_and_the_file_bytes() {
        let mut req = TranscriptionRequest::new("whisper-1", b"RIFF\x00\x01audio".to_vec(), "wav");
        req.language = Some("zh".into());
        let body = multipart_body(&req, "BOUNDARY");
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(
            "--BOUNDARY\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
        ));
        assert!(text.contains("name=\"response_format\"\r\n\r\njson\r\n"));
        assert!(text.contains("name=\"language\"\r\n\r\nzh\r\n"));
        assert!(text.contains(
            "name=\"file\"; filename=\"voice.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\u{0}\u{1}audio\r\n--BOUNDARY--\r\n"
        ));
        assert!(contains(&body, b"RIFF\x00\x01audio"));
        assert!(!contains(b"abc", b""));
    }

    const CT: &str = "multipart/form-data; boundary=XyZ";

    fn body(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, filename, content) in parts {
            b.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"");
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(b"\"");
            if let Some(f) = filename {
                b.extend_from_slice(
                    format!("; filename=\"{f}\"\r\nContent-Type: audio/wav").as_bytes(),
                );
            }
            b.extend_from_slice(b"\r\n\r\n");
            b.extend_from_slice(content);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    #[test]
    fn uploads_are_parsed_like_openai_clients_send_them() {
        let wav = b"RIFF\r\n--Xy\r\nnot a boundary";
        let b = body(&[
            ("model", None, b"whisper-1"),
            ("file", Some("a.WAV"), wav),
            ("response_format", None, b"text"),
        ]);
        let u = parse_upload(CT, &b).unwrap();
        assert_eq!(u.file.as_deref(), Some(&wav[..]));
        assert_eq!(u.filename.as_deref(), Some("a.WAV"));
        assert_eq!(u.content_type.as_deref(), Some("audio/wav"));
        assert_eq!(u.fields["model"], "whisper-1");
        assert_eq!(u.fields["response_format"], "text");
        let quoted = "multipart/form-data; boundary=\"XyZ\"";
        assert!(parse_upload(quoted, &b).is_ok());
    }

    #[test]
    fn malformed_uploads_are_refused_not_panicked_on() {
        let good = body(&[("file", Some("a.wav"), b"abc")]);
        assert!(parse_upload("application/json", &good).is_err());
        assert!(parse_upload("multipart/form-data", &good).is_err());
        for cut in 0..good.len() - 9 {
            // No truncation panics (cut inside the final marker, it is even a whole upload).
            let _ = parse_upload(CT, &good[..cut]);
        }
        assert!(parse_upload(CT, &good[..good.len() - 12]).is_err());
        assert!(parse_upload(CT, b"--XyZ\r\nno headers end").is_err());
        let two = body(&[("file", Some("a.wav"), b"a"), ("file", Some("b.wav"), b"b")]);
        assert_eq!(parse_upload(CT, &two).unwrap_err(), "more than one file");
        let long = body(&[("model", None, &[b'm'; MAX_FIELD_BYTES + 1])]);
        assert!(parse_upload(CT, &long).is_err());
        let many: Vec<(&str, Option<&str>, &[u8])> =
            (0..=MAX_PARTS).map(|_| ("x", None, &b"1"[..])).collect();
        assert!(parse_upload(CT, &body(&many)).is_err());
        assert!(parse_upload(CT, &body(&[])).unwrap().file.is_none());
    }

    #[test]
    fn what_the_client_writes_the_server_reads() {
        let mut req = TranscriptionRequest::new("whisper-1", b"RIFF\r\n--a\r\n".to_vec(), "wav");
        req.language = Some("zh".into());
        let body = multipart_body(&req, "BOUND");
        let u = parse_upload("multipart/form-data; boundary=BOUND", &body).unwrap();
        assert_eq!(u.file.as_deref(), Some(&req.file[..]));
        assert_eq!(u.filename.as_deref(), Some("voice.wav"));
        assert_eq!(u.content_type.as_deref(), Some("audio/wav"));
        assert_eq!(u.fields["model"], "whisper-1");
        assert_eq!(u.fields["language"], "zh");
    }
}
