//! `POST /v1/audio/transcriptions`: OpenAI's speech-to-text, proxied to `[speech]` and
//! metered like a voice message (same user token). The upload is a `multipart/form-data`
//! body (read whole, within `[server] max_body_bytes`, then `[speech] max_bytes` for the
//! file): `file` (required), `model` (any: the configured model transcribes),
//! `response_format` (`json`, the default, or `text`); other fields (`language`, `prompt`,
//! `temperature`) are accepted and ignored.

use std::collections::HashMap;

use axum::http::header;

use super::*;

/// Parts in one upload at most.
const MAX_PARTS: usize = 16;
/// The longest form field other than the file.
const MAX_FIELD_BYTES: usize = 1024;
/// The longest header block of one part.
const MAX_PART_HEADER_BYTES: usize = 4096;

/// A parsed upload.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Upload {
    /// The `file` part's bytes.
    pub(super) file: Option<Vec<u8>>,
    /// Its `filename`.
    pub(super) filename: Option<String>,
    /// Its `Content-Type`.
    pub(super) content_type: Option<String>,
    /// The other (text) fields.
    pub(super) fields: HashMap<String, String>,
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
pub(super) fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Upload, String> {
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

/// The audio format of an upload, as a file extension: the file name's, else its type's.
fn format_of(upload: &Upload) -> String {
    let from_name = upload
        .filename
        .as_deref()
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e.len() <= 8 && e.bytes().all(|b| b.is_ascii_alphanumeric()));
    from_name.unwrap_or_else(|| {
        match upload
            .content_type
            .as_deref()
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str()
        {
            "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
            "audio/mpeg" | "audio/mp3" => "mp3",
            "audio/ogg" | "audio/opus" => "ogg",
            "audio/webm" => "webm",
            "audio/mp4" | "audio/m4a" | "audio/x-m4a" => "m4a",
            "audio/flac" | "audio/x-flac" => "flac",
            "audio/amr" => "amr",
            _ => "bin",
        }
        .to_owned()
    })
}

/// `POST /v1/audio/transcriptions`.
pub(super) async fn transcriptions(
    State(st): State<WebState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let lang = Lang::of_request(&headers, &st.engine.settings().texts);
    let uid = authenticate(&st, &headers)?;
    let body = body.map_err(|e| body_error(lang, &e))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let upload = parse_multipart(content_type, &body).map_err(|m| ApiError::invalid("file", m))?;
    let format = format_of(&upload);
    let response_format = upload
        .fields
        .get("response_format")
        .map_or("json", String::as_str)
        .to_owned();
    if !matches!(response_format.as_str(), "json" | "text") {
        return Err(ApiError::invalid(
            "response_format",
            lang.pick(
                "response_format must be json or text.",
                "response_format 只能是 json 或 text。",
            ),
        ));
    }
    let Some(file) = upload.file.filter(|f| !f.is_empty()) else {
        return Err(ApiError::invalid(
            "file",
            lang.pick(
                "A non-empty file is required.",
                "需要一个非空的音频文件 file。",
            ),
        ));
    };
    let reference = format!("api:{}", random_id());
    match st
        .engine
        .transcribe_api(uid, file, &format, &reference)
        .await
    {
        Ok((text, _charged)) if response_format == "text" => {
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
        }
        Ok((text, _charged)) => Ok(Json(json!({ "text": text })).into_response()),
        Err(ReplyEvent::Failed { kind, message }) => {
            Err(failure(st.shutdown.is_cancelled(), lang, kind, message))
        }
        Err(_) => Err(interrupted(st.shutdown.is_cancelled(), lang)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let u = parse_multipart(CT, &b).unwrap();
        assert_eq!(u.file.as_deref(), Some(&wav[..]));
        assert_eq!(u.filename.as_deref(), Some("a.WAV"));
        assert_eq!(u.content_type.as_deref(), Some("audio/wav"));
        assert_eq!(u.fields["model"], "whisper-1");
        assert_eq!(u.fields["response_format"], "text");
        assert_eq!(format_of(&u), "wav");
        let quoted = "multipart/form-data; boundary=\"XyZ\"";
        assert!(parse_multipart(quoted, &b).is_ok());
    }

    #[test]
    fn malformed_uploads_are_refused_not_panicked_on() {
        let good = body(&[("file", Some("a.wav"), b"abc")]);
        assert!(parse_multipart("application/json", &good).is_err());
        assert!(parse_multipart("multipart/form-data", &good).is_err());
        for cut in 0..good.len() - 9 {
            // No truncation panics (cut inside the final marker, it is even a whole upload).
            let _ = parse_multipart(CT, &good[..cut]);
        }
        assert!(parse_multipart(CT, &good[..good.len() - 12]).is_err());
        assert!(parse_multipart(CT, b"--XyZ\r\nno headers end").is_err());
        let two = body(&[("file", Some("a.wav"), b"a"), ("file", Some("b.wav"), b"b")]);
        assert_eq!(parse_multipart(CT, &two).unwrap_err(), "more than one file");
        let long = body(&[("model", None, &[b'm'; MAX_FIELD_BYTES + 1])]);
        assert!(parse_multipart(CT, &long).is_err());
        let many: Vec<(&str, Option<&str>, &[u8])> =
            (0..=MAX_PARTS).map(|_| ("x", None, &b"1"[..])).collect();
        assert!(parse_multipart(CT, &body(&many)).is_err());
        assert!(parse_multipart(CT, &body(&[])).unwrap().file.is_none());
    }
}
