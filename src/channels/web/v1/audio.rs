//! `POST /v1/audio/transcriptions`: OpenAI's speech-to-text, proxied to `[speech]` and
//! metered like a voice message (same user token). The upload is a `multipart/form-data`
//! body (read whole, within `[server] max_body_bytes`, then `[speech] max_bytes` for the
//! file): `file` (required), `model` (any: the configured model transcribes),
//! `response_format` (`json`, the default, or `text`); other fields (`language`, `prompt`,
//! `temperature`) are accepted and ignored. The body is parsed by
//! [`chatrelay_openai::audio::parse_upload`] (fuzzed: `fuzz/fuzz_targets/multipart.rs`).
//!
//! `POST /v1/audio/speech`: OpenAI's text-to-speech, proxied to `[speech] speech_model` and
//! charged `[speech] speech_credits` (same user token): a JSON body with `input` (at most
//! 4096 characters), `voice` (else `[speech] voice`), `response_format` (`mp3`, the default,
//! `opus`, `aac`, `flac`, `wav`, `pcm`), `model` (any: the configured one speaks); `speed`
//! and `instructions` are accepted and ignored. Answered with the audio's bytes.

use axum::http::header;
use chatrelay_openai::audio::{Upload, parse_upload};

use super::*;

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
    let uid = authenticate(&st, &headers).await?;
    let body = body.map_err(|e| body_error(lang, &e))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let upload = parse_upload(content_type, &body).map_err(|m| ApiError::invalid("file", m))?;
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

/// A `/v1/audio/speech` request.
#[derive(serde::Deserialize)]
struct SpeechBody {
    input: String,
    #[serde(default)]
    voice: Option<String>,
    #[serde(default)]
    response_format: Option<String>,
}

/// The `Content-Type` of a speech format.
fn audio_type(format: &str) -> &'static str {
    match format {
        "mp3" => "audio/mpeg",
        "opus" => "audio/ogg",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// `POST /v1/audio/speech`.
pub(super) async fn speech(
    State(st): State<WebState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let lang = Lang::of_request(&headers, &st.engine.settings().texts);
    let uid = authenticate(&st, &headers).await?;
    let body = body.map_err(|e| body_error(lang, &e))?;
    let req: SpeechBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(
            "input",
            lang.pick(
                format!("The body must be JSON with an input string: {e}"),
                format!("请求体须是带 input 字符串的 JSON：{e}"),
            ),
        )
    })?;
    let format = req
        .response_format
        .as_deref()
        .unwrap_or("mp3")
        .to_ascii_lowercase();
    let voice = req
        .voice
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty());
    if voice.is_some_and(|v| v.len() > 64 || v.chars().any(char::is_control)) {
        return Err(ApiError::invalid(
            "voice",
            lang.pick("The voice name is unusable.", "voice 名称不可用。"),
        ));
    }
    let reference = format!("api:{}", random_id());
    match st
        .engine
        .speak_api(uid, &req.input, voice, &format, &reference)
        .await
    {
        Ok((audio, _charged)) => {
            Ok(([(header::CONTENT_TYPE, audio_type(&format))], audio).into_response())
        }
        Err(ReplyEvent::Failed { kind, message }) => {
            Err(failure(st.shutdown.is_cancelled(), lang, kind, message))
        }
        Err(_) => Err(interrupted(st.shutdown.is_cancelled(), lang)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_comes_from_the_name_else_the_type() {
        let mut u = Upload {
            filename: Some("a.WAV".into()),
            content_type: Some("audio/mpeg".into()),
            ..Upload::default()
        };
        assert_eq!(format_of(&u), "wav");
        u.filename = Some("noext".into());
        assert_eq!(format_of(&u), "mp3");
        u.filename = Some("bad.ex/t".into());
        u.content_type = None;
        assert_eq!(format_of(&u), "bin");
    }
}
