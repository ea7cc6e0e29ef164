//! The admin API's bearer token: the configured one, or one generated once and kept in the
//! data directory (mode 0600), where the admin CLI finds it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tracing::{info, warn};

use crate::config::{Config, Secret};

/// Where a generated admin token is kept inside the data directory.
#[must_use]
pub fn admin_token_path(config: &Config) -> PathBuf {
    config.storage.path.join("admin.token")
}

/// The admin token: the configured one, else the one kept in the data directory, else a new
/// random one written there (mode 0600) for the admin CLI to find.
pub fn resolve_admin_token(config: &Config) -> anyhow::Result<Secret> {
    if let Some(t) = &config.server.admin_token {
        return Ok(t.clone());
    }
    let path = admin_token_path(config);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let t = existing.trim();
        if t.len() >= 16 {
            return Ok(Secret::new(t));
        }
        warn!(path = %path.display(), "admin token file is too short; writing a new one");
    }
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let token = hex::encode(bytes);
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    info!(path = %path.display(), "generated an admin token (server.admin_token is unset)");
    Ok(Secret::new(token))
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
