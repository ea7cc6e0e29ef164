//! `/v1/audio/transcriptions` reads a multipart upload from any token holder: no body may make
//! the parser panic, and whatever it returns as the file is a piece of the body.
#![no_main]

use chatrelay_openai::audio::parse_upload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the boundary the content type announces (one that occurs in
    // the seed bodies, one that may not, a quoted one).
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let content_type = match pick % 3 {
        0 => "multipart/form-data; boundary=XyZ",
        1 => "multipart/form-data; boundary=\"a\"",
        _ => "multipart/form-data; charset=utf-8; boundary=chatrelay-0123456789abcdef",
    };
    if let Ok(upload) = parse_upload(content_type, body) {
        if let Some(file) = &upload.file {
            assert!(file.len() <= body.len());
            assert!(file.is_empty() || body.windows(file.len()).any(|w| w == file.as_slice()));
        }
        assert!(upload.fields.len() <= 16);
    }
});
