//! Audio conversion for voice messages: finding ffmpeg (once per program, off the async
//! workers), turning WeChat's AMR/Speex into 16 kHz mono WAV through it (stdin → stdout, with
//! a timeout and a bound on what it writes), and the lengths of AMR and WAV audio read from
//! their framing, so that limits and per-minute prices need no decoder.
//!
//! What goes into ffmpeg comes from users (a voice message, an upload to `/v1`), so ffmpeg may
//! open nothing but its stdin (`-protocol_whitelist pipe`: a playlist or a concat script
//! cannot make it fetch a URL or read a local file) and read nothing but audio containers
//! (`-format_whitelist`, [`AUDIO_DEMUXERS`]).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The program could not be started.
    #[error("starting {program} failed: {error}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        error: std::io::Error,
    },
    /// It took longer than allowed (it is killed).
    #[error("ffmpeg took longer than {0:?}")]
    Timeout(Duration),
    /// It wrote more than allowed (it is killed).
    #[error("ffmpeg wrote more than {0} bytes")]
    TooLarge(usize),
    /// It failed: the input is not audio it can read, usually.
    #[error("ffmpeg failed ({status}): {stderr}")]
    Failed {
        /// Its exit status.
        status: String,
        /// The start of what it said.
        stderr: String,
    },
    /// Reading or writing its pipes failed.
    #[error("ffmpeg's pipes failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The first line of `program -version` per program asked about (`None`: not runnable),
/// remembered for the life of the process.
fn detected() -> &'static Mutex<HashMap<String, Option<String>>> {
    static DETECTED: OnceLock<Mutex<HashMap<String, Option<String>>>> = OnceLock::new();
    DETECTED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The version line of ffmpeg at `program`, or `None` when it cannot be run. Runs
/// `program -version` the first time only (blocking: call it off the async workers, as
/// [`ffmpeg_available`] does, or from the command line).
pub fn detect(program: &str) -> Option<String> {
    if let Some(known) = detected()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(program)
    {
        return known.clone();
    }
    let found = std::process::Command::new(program)
        .arg("-version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .filter(|l| !l.is_empty());
    detected()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(program.to_owned(), found.clone());
    found
}

/// Whether ffmpeg at `program` runs (detected once, on a blocking thread).
pub async fn ffmpeg_available(program: &str) -> bool {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || detect(&program).is_some())
        .await
        .unwrap_or(false)
}

/// Bytes per second of the WAV [`to_wav`] writes (16 kHz, mono, 16-bit).
const WAV_BYTES_PER_SECOND: u64 = 16_000 * 2;

/// The largest WAV [`to_wav`] may write for `max_seconds` of audio (plus its header and a
/// little slack).
#[must_use]
pub fn wav_limit(max_seconds: u64) -> usize {
    usize::try_from(
        max_seconds
            .saturating_add(2)
            .saturating_mul(WAV_BYTES_PER_SECOND)
            .saturating_add(4096),
    )
    .unwrap_or(usize::MAX)
}

/// The demuxers ffmpeg may use on user audio: WeChat's AMR, Speex and Opus in Ogg, a
/// browser's webm (matroska) or mp4 (mov), MP3, WAV, FLAC and raw AAC. Not HLS, concat,
/// image or video-only formats, nor anything that opens other files.
pub const AUDIO_DEMUXERS: &str = "amr,amrnb,amrwb,ogg,matroska,webm,mov,mp4,m4a,mp3,wav,flac,aac";

/// Conversions running at once at most: each is a process busy on a core; a burst of voice
/// messages waits its turn instead of starving the daemon.
const MAX_CONVERSIONS: usize = 4;

/// The permits of [`MAX_CONVERSIONS`].
fn conversions() -> &'static tokio::sync::Semaphore {
    static PERMITS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| tokio::sync::Semaphore::new(MAX_CONVERSIONS))
}

/// Converts `input` (any format ffmpeg reads: AMR, Speex in Ogg, ...) to 16 kHz mono 16-bit
/// WAV with ffmpeg at `program`: the audio goes in on stdin and comes out on stdout. It is
/// killed past `timeout` (waiting for a turn included: at most [`MAX_CONVERSIONS`] run at
/// once) or once it has written more than `max_output` bytes.
pub async fn to_wav(
    program: &str,
    input: Vec<u8>,
    timeout: Duration,
    max_output: usize,
) -> Result<Vec<u8>, ConvertError> {
    let Ok(Ok(_turn)) = tokio::time::timeout(timeout, conversions().acquire()).await else {
        return Err(ConvertError::Timeout(timeout));
    };
    let mut child = tokio::process::Command::new(program)
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-protocol_whitelist",
            "pipe",
            "-format_whitelist",
            AUDIO_DEMUXERS,
            "-i",
            "pipe:0",
            "-vn",
            "-ac",
            "1",
            "-ar",
            "16000",
            "-c:a",
            "pcm_s16le",
            "-f",
            "wav",
            "pipe:1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| ConvertError::Spawn {
            program: program.to_owned(),
            error,
        })?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ConvertError::Io(std::io::Error::other("pipes missing")));
    };
    let work = async move {
        // Written while the output is read: a large input would otherwise fill both pipes.
        let feed = async move {
            // ffmpeg may stop reading early (it found an error): that shows in its status.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let limit = u64::try_from(max_output)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let read_out = async move {
            let mut out = Vec::new();
            stdout.take(limit).read_to_end(&mut out).await.map(|_| out)
        };
        let read_err = async move {
            let mut err = Vec::new();
            let _ = stderr.take(4096).read_to_end(&mut err).await;
            err
        };
        let ((), out, err) = tokio::join!(feed, read_out, read_err);
        (out, err)
    };
    let (out, err) = match tokio::time::timeout(timeout, work).await {
        Ok(done) => done,
        Err(_) => {
            let _ = child.kill().await;
            return Err(ConvertError::Timeout(timeout));
        }
    };
    let out = out?;
    if out.len() > max_output {
        let _ = child.kill().await;
        return Err(ConvertError::TooLarge(max_output));
    }
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(ConvertError::Timeout(timeout));
        }
    };
    if !status.success() || out.len() <= 44 {
        let stderr: String = String::from_utf8_lossy(&err).chars().take(300).collect();
        return Err(ConvertError::Failed {
            status: status.to_string(),
            stderr: stderr.trim().to_owned(),
        });
    }
    Ok(out)
}

/// The length of the WAV [`to_wav`] wrote, in milliseconds (from its size: ffmpeg writing to
/// a pipe cannot go back to fill in the header's sizes).
#[must_use]
pub fn converted_wav_ms(wav: &[u8]) -> u64 {
    (wav.len().saturating_sub(44) as u64).saturating_mul(1000) / WAV_BYTES_PER_SECOND
}

/// The length of a PCM WAV file in milliseconds, from its header's byte rate and its size;
/// `None` when it is not a RIFF/WAVE file with a usable byte rate.
#[must_use]
pub fn wav_ms(file: &[u8]) -> Option<u64> {
    if file.get(..4)? != b"RIFF" || file.get(8..12)? != b"WAVE" {
        return None;
    }
    let rate = u32::from_le_bytes(file.get(28..32)?.try_into().ok()?);
    (rate > 0)
        .then(|| (file.len().saturating_sub(44) as u64).saturating_mul(1000) / u64::from(rate))
}

/// The length of an AMR-NB file (`#!AMR\n` then frames of 20 ms, each sized by the mode in
/// its first byte), in milliseconds; `None` when it is not AMR-NB or is cut short.
#[must_use]
pub fn amr_ms(file: &[u8]) -> Option<u64> {
    /// Bytes after the table-of-contents byte, by frame type (0-7 speech, 8 comfort noise,
    /// 15 no data; the rest carry nothing).
    const PAYLOAD: [usize; 16] = [12, 13, 15, 17, 19, 20, 26, 31, 5, 0, 0, 0, 0, 0, 0, 0];
    let mut rest = file.strip_prefix(b"#!AMR\n")?;
    let mut frames: u64 = 0;
    while let Some((&toc, after)) = rest.split_first() {
        let kind = usize::from((toc >> 3) & 0x0f);
        let size = PAYLOAD.get(kind).copied().unwrap_or(0);
        rest = after.get(size..)?;
        frames += 1;
    }
    (frames > 0).then_some(frames * 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amr_length_comes_from_its_frames() {
        // Three 12.2 kbit/s frames (type 7: 31 bytes after the ToC byte) and one no-data frame.
        let mut amr = b"#!AMR\n".to_vec();
        for _ in 0..3 {
            amr.push(7 << 3 | 0x04);
            amr.extend_from_slice(&[0u8; 31]);
        }
        amr.push(15 << 3 | 0x04);
        assert_eq!(amr_ms(&amr), Some(80));
        // Cut in the middle of a frame: not a whole file.
        assert_eq!(amr_ms(&amr[..amr.len() - 10]), None);
        // No header, or nothing after it.
        assert_eq!(amr_ms(b"RIFF...."), None);
        assert_eq!(amr_ms(b"#!AMR\n"), None);
    }

    #[test]
    fn wav_length_and_limits() {
        assert_eq!(converted_wav_ms(&vec![0u8; 44 + 32_000 * 3]), 3000);
        assert_eq!(converted_wav_ms(&[0u8; 10]), 0);
        assert!(wav_limit(60) > 60 * 32_000);
        let mut wav = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        wav.resize(28, 0);
        wav.extend_from_slice(&16_000u32.to_le_bytes());
        wav.resize(44 + 16_000 * 2, 0);
        assert_eq!(wav_ms(&wav), Some(2000));
        assert_eq!(wav_ms(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(wav_ms(b"OggS"), None);
    }

    #[tokio::test]
    async fn a_missing_program_is_reported_not_run() {
        assert_eq!(detect("/nonexistent/ffmpeg-for-tests"), None);
        assert!(!ffmpeg_available("/nonexistent/ffmpeg-for-tests").await);
        let err = to_wav(
            "/nonexistent/ffmpeg-for-tests",
            vec![1, 2, 3],
            Duration::from_secs(5),
            1000,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ConvertError::Spawn { .. }), "{err}");
    }

    /// With ffmpeg installed: a playlist (HLS) or a concat script is not followed: no URL
    /// fetched, no file read, the conversion refused.
    #[tokio::test]
    async fn ffmpeg_opens_nothing_but_its_input() {
        if detect("ffmpeg").is_none() {
            eprintln!("skipped: ffmpeg is not installed");
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let hls = format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nhttp://127.0.0.1:{port}/a.ts\n\
             #EXTINF:10.0,\nfile:///etc/hostname\n#EXT-X-ENDLIST\n"
        );
        let concat = b"ffconcat version 1.0\nfile /etc/hostname\n".to_vec();
        for input in [hls.into_bytes(), concat] {
            let got = to_wav("ffmpeg", input, Duration::from_secs(20), wav_limit(60)).await;
            // Refused for its format, before it could follow anything (ffmpeg's own defaults
            // vary by version and build; the whitelist does not).
            assert!(
                matches!(&got, Err(ConvertError::Failed { stderr, .. })
                    if stderr.contains("not on whitelist")),
                "{got:?}"
            );
        }
        assert!(
            listener.accept().is_err(),
            "ffmpeg connected to the playlist's URL"
        );
    }

    /// With ffmpeg installed (CI installs it): a real conversion, and garbage refused.
    #[tokio::test]
    async fn ffmpeg_converts_audio_and_refuses_garbage() {
        if detect("ffmpeg").is_none() {
            eprintln!("skipped: ffmpeg is not installed");
            return;
        }
        // One second of silence as 8 kHz WAV: ffmpeg resamples it to 16 kHz.
        let mut wav = Vec::new();
        let data = vec![0u8; 16_000];
        wav.extend_from_slice(b"RIFF");
        wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        wav.extend_from_slice(b"WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&8000u32.to_le_bytes());
        wav.extend_from_slice(&16_000u32.to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
        wav.extend_from_slice(&data);
        let out = to_wav(
            "ffmpeg",
            wav.clone(),
            Duration::from_secs(20),
            wav_limit(60),
        )
        .await
        .unwrap();
        assert_eq!(&out[..4], b"RIFF");
        let ms = converted_wav_ms(&out);
        assert!((900..=1100).contains(&ms), "{ms}");
        // Bounded output: a limit below one second of output stops it.
        let small = to_wav("ffmpeg", wav, Duration::from_secs(20), 1000).await;
        assert!(
            matches!(small, Err(ConvertError::TooLarge(1000))),
            "{small:?}"
        );
        let bad = to_wav(
            "ffmpeg",
            b"not audio at all".to_vec(),
            Duration::from_secs(20),
            1 << 20,
        )
        .await;
        assert!(matches!(bad, Err(ConvertError::Failed { .. })), "{bad:?}");
    }
}
