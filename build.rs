//! Build metadata for `chatrelay --version`: the git commit and the build date.
//!
//! The commit comes from `CHATRELAY_GIT_COMMIT` when set (container builds, whose context has
//! no `.git`), else `git rev-parse`, else "unknown". The date is `CHATRELAY_BUILD_DATE`
//! (`YYYY-MM-DD`) when set, else the UTC day of `SOURCE_DATE_EPOCH` (reproducible builds),
//! else of the current time.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=CHATRELAY_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=CHATRELAY_BUILD_DATE");
    let commit = std::env::var("CHATRELAY_GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    // A new commit or checkout changes HEAD or the ref it points to (in a worktree, HEAD is
    // in its own git dir and the refs in the common one): rebuild the string then.
    let dirs = [
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ];
    for dir in dirs.iter().flatten() {
        for f in ["HEAD", "refs", "packed-refs"] {
            println!("cargo:rerun-if-changed={dir}/{f}");
        }
    }
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });
    println!("cargo:rustc-env=CHATRELAY_GIT_COMMIT={commit}");
    // An explicit day wins: container builds pass it instead of SOURCE_DATE_EPOCH, which
    // the `cc` crate also watches, so that a new commit does not rebuild ring & co.
    let day = std::env::var("CHATRELAY_BUILD_DATE")
        .ok()
        .map(|d| d.trim().to_owned())
        .filter(|d| is_day(d))
        .unwrap_or_else(|| utc_day(epoch));
    println!("cargo:rustc-env=CHATRELAY_BUILD_DATE={day}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn git_commit() -> Option<String> {
    git(&["rev-parse", "--short=12", "HEAD"])
}

/// `YYYY-MM-DD` with digits where they belong (a typo in the variable must not reach
/// `--version`).
fn is_day(d: &str) -> bool {
    d.len() == 10
        && d.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// `YYYY-MM-DD` (UTC) of a Unix time (Howard Hinnant's civil-from-days).
fn utc_day(epoch: i64) -> String {
    let z = epoch.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
