//! The `chatrelay` binary: `run` (the default), `check-config`, `admin ...`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chatrelay::admin::cli::{self as admin_cli, AdminCommand};
use chatrelay::app::{self, App};
use chatrelay::config::{self, Config};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "chatrelay",
    version = chatrelay::LONG_VERSION,
    about = "Chat platforms to any OpenAI-compatible LLM, with quota and payments"
)]
struct Cli {
    /// Configuration file (default: ./chatrelay.toml if it exists, else built-in defaults).
    #[arg(long, short, global = true, env = "CHATRELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration, list every problem, print a redacted summary.
    CheckConfig,
    /// Restore a backup (from `chatrelay admin backup`) into an empty data directory; run it
    /// with the daemon stopped.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The data directory to restore into (default: storage.path); its database must not exist.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Upgrade the store in place, with the daemons stopped. PostgreSQL: apply pending
    /// migrations; a schema of the older one-table layout is copied into the relational
    /// tables, checked by a census, and only then is the old table dropped. Embedded store:
    /// open it (it upgrades itself) and print its census.
    Migrate,
    /// Copy a single-server installation's data into the relational tables of an empty
    /// PostgreSQL schema, then check both sides have the same census (users, balances,
    /// ledger sums, orders...). Run it with the daemon stopped.
    MigrateData {
        /// The source: `sled:DIR`, the data directory (storage.path) or its `db` inside.
        #[arg(long)]
        from: String,
        /// The destination: a PostgreSQL URL (default: storage.url); its schema must be empty.
        #[arg(long)]
        to: Option<String>,
        /// The destination schema (default: storage.schema).
        #[arg(long)]
        schema: Option<String>,
    },
    /// Administer the running daemon through its admin API.
    Admin {
        /// The daemon's base URL (default: from server.listen).
        #[arg(long, env = "CHATRELAY_ADMIN_URL")]
        url: Option<String>,
        /// The admin token (default: server.admin_token, or the generated one in the data directory).
        #[arg(long, env = "CHATRELAY_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print the API's JSON instead of tables (for scripts).
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

fn main() -> ExitCode {
    malloc::tune();
    let cli = Cli::parse();
    let loaded = match config::load(cli.config.as_deref()) {
        Ok(l) => l,
        // The admin CLI needs the file only to find the daemon: with --url and --token it
        // still works while the file is broken (to ask the daemon what it thinks of it).
        Err(e)
            if matches!(
                &cli.command,
                Some(Command::Admin {
                    url: Some(_),
                    token: Some(_),
                    ..
                })
            ) =>
        {
            let _ = writeln!(
                std::io::stderr(),
                "chatrelay: warning: {e}\n(continuing with --url and --token)"
            );
            config::Loaded {
                config: Config::default(),
                file: None,
                env_keys: Vec::new(),
            }
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "chatrelay: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(loaded),
        Command::CheckConfig => check_config(&loaded),
        Command::Restore { file, data } => restore(&loaded.config, &file, data),
        Command::Migrate => migrate(&loaded.config),
        Command::MigrateData { from, to, schema } => {
            migrate_data(&loaded.config, &from, to, schema)
        }
        Command::Admin {
            url,
            token,
            json,
            command,
        } => admin(&loaded.config, url, token, command, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "chatrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Colour codes only on a terminal: a file or journald would keep them as noise. `NO_COLOR`
/// (any non-empty value, <https://no-color.org>) turns them off everywhere.
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(loaded: config::Loaded) -> anyhow::Result<()> {
    init_logging(&loaded.config);
    tracing::info!(
        version = chatrelay::LONG_VERSION,
        config = %loaded.file.as_ref().map_or("(built-in defaults)".to_owned(), |p| p.display().to_string()),
        env_overrides = ?loaded.env_keys,
        "starting"
    );
    runtime()?.block_on(async move {
        let app = App::build(loaded.config, loaded.file).await?;
        // Outside the tracker on purpose: it lives until the process ends and only cancels.
        tokio::spawn(app::stop_on_signals(app.shutdown_token()));
        app.serve().await
    })
}

fn check_config(loaded: &config::Loaded) -> anyhow::Result<()> {
    let c = &loaded.config;
    let mut out = String::new();
    out.push_str(&format!(
        "configuration OK\n  file: {}\n  environment overrides: {}\n  LLM provider: {:?}{}\n  admin token: {}\n\n",
        loaded.file.as_ref().map_or("(none: built-in defaults)".to_owned(), |p| p.display().to_string()),
        if loaded.env_keys.is_empty() { "(none)".to_owned() } else { loaded.env_keys.join(", ") },
        c.provider(),
        if c.provider() == config::Provider::Demo { " (offline demo: set [llm] api_keys or OPENAI_API_KEY)" } else { "" },
        if c.server.admin_token.is_some() { "configured".to_owned() } else { format!("generated at first start in {}", chatrelay::auth::admin_token_path(c).display()) },
    ));
    if let Some(sp) = &c.speech {
        let ffmpeg = match chatrelay::engine::ffmpeg::detect(&sp.ffmpeg) {
            Some(version) => format!("{version} ({})", sp.ffmpeg),
            None => format!(
                "NOT FOUND ({}): WeChat's AMR/Speex voice needs its Recognition (接收语音识别结果), else users are told voice is not supported",
                sp.ffmpeg
            ),
        };
        out.push_str(&format!(
            "speech: model {} at {}{}
  ffmpeg: {ffmpeg}

",
            sp.model,
            sp.upstream.as_deref().unwrap_or("default"),
            if sp.fallbacks.is_empty() {
                String::new()
            } else {
                format!(" (fallbacks: {})", sp.fallbacks.join(", "))
            },
        ));
    }
    let warnings = c.warnings();
    if !warnings.is_empty() {
        out.push_str(&format!("warnings ({}):\n", warnings.len()));
        for w in &warnings {
            out.push_str(&format!("  - {w}\n"));
        }
        out.push('\n');
    }
    out.push_str(&c.redacted_summary());
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing to stdout")
}

fn restore(config: &Config, file: &std::path::Path, data: Option<PathBuf>) -> anyhow::Result<()> {
    let data = data.unwrap_or_else(|| config.storage.path.clone());
    let db = data.join("db");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let input = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut input = std::io::BufReader::new(input);
    let summary = chatrelay_storage::KvStore::restore_backup(
        &mut input,
        &db,
        config.storage.cache_capacity_mb * 1024 * 1024,
    )
    .with_context(|| format!("restoring {} into {}", file.display(), db.display()))?;
    let msg = format!(
        "restored {} records in {} trees (schema {}) into {}\n",
        summary.records,
        summary.trees,
        summary.schema_version,
        db.display()
    );
    std::io::stdout()
        .write_all(msg.as_bytes())
        .context("writing to stdout")
}

/// A single-threaded runtime for the one-shot commands that talk to PostgreSQL.
fn one_shot_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Writes `text` to stdout (a closed pipe is an error, not a panic).
fn say(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// `chatrelay migrate`: on PostgreSQL, upgrades the schema in place (the one-table layout of
/// an older chatrelay is copied into the relational tables, checked by a census, and only
/// then dropped); on the embedded store, opens it (which upgrades it) and prints its census.
fn migrate(config: &Config) -> anyhow::Result<()> {
    let Some(opts) = config.storage.postgres() else {
        return migrate_sled(config);
    };
    let schema = config.storage.schema.clone();
    let report = one_shot_runtime()?
        .block_on(chatrelay_storage::migrate_postgres_in_place(
            &opts,
            |line| {
                // Progress only: a failed write must not stop a migration half way.
                let _ = say(&format!("{line}\n"));
            },
        ))
        .with_context(|| format!("migrating schema {schema}"))?;
    let mut out = String::new();
    for version in &report.applied {
        out.push_str(&format!("applied relational migration {version}\n"));
    }
    if let Some(copied) = &report.copied {
        out.push_str(&copy_table(copied));
        out.push_str(&format!(
            "verified: {}\ndropped the old layout: {}\n",
            verified_line(&copied.census),
            report.dropped.join(", ")
        ));
    } else if report.applied.is_empty() {
        out.push_str(&format!(
            "schema {schema}: already relational, version {}\n",
            report.version
        ));
    }
    out.push_str(&format!(
        "schema {schema} is at version {} ({} applied now, {} before)\n",
        report.version,
        report.applied.len(),
        report.found_version
    ));
    say(&out)
}

/// `chatrelay migrate` on the embedded store: opening it upgrades its layout (see
/// `KvStore::open`); the census says what it holds.
fn migrate_sled(config: &Config) -> anyhow::Result<()> {
    let db = app::db_path(config);
    if !db.join("conf").exists() {
        return say(&format!(
            "no database at {} yet: nothing to migrate (the daemon creates one at its first start)\n",
            db.display()
        ));
    }
    let store =
        chatrelay_storage::KvStore::open(&db, config.storage.cache_capacity_mb * 1024 * 1024)
            .with_context(|| format!("opening {} (is the daemon still running?)", db.display()))?;
    let census = store.census(now_ms()).context("taking the census")?;
    store
        .flush_blocking()
        .context("writing the upgraded schema version")?;
    say(&format!(
        "embedded store {} is at schema version {} (it upgrades itself when opened)\n{census}",
        db.display(),
        chatrelay_storage::SCHEMA_VERSION
    ))
}

/// Milliseconds since the Unix epoch (what the census counts live login codes at).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Rows copied per table, one line each.
fn copy_table(copied: &chatrelay_storage::RelCopyReport) -> String {
    let mut out = String::new();
    for (table, n) in &copied.tables {
        out.push_str(&format!("{table:<22} {n:>10}\n"));
    }
    if copied.skipped_expired > 0 {
        out.push_str(&format!(
            "(left behind: {} expired dedupe marks, answers, handoffs and login codes)\n",
            copied.skipped_expired
        ));
    }
    out
}

/// The census figures both sides agreed on, on one line.
fn verified_line(c: &chatrelay_storage::Census) -> String {
    let orders = c
        .orders
        .iter()
        .map(|(status, t)| format!("{} {status} ({} fen)", t.count, t.amount_fen))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "the census is equal on both sides: {} balances, paid credits {} and held credits {}; \
         {} users, {} identities, {} tokens; {} ledger entries (free {}, paid {}); orders: {orders}; \
         {} conversations, {} turns, {} usage records",
        c.users,
        c.paid_sum,
        c.held_sum,
        c.users,
        c.identities,
        c.tokens,
        c.ledger_entries,
        c.ledger_free_delta_sum,
        c.ledger_paid_delta_sum,
        c.conversations,
        c.turns,
        c.usage_records
    )
}

/// `chatrelay migrate-data --from sled:DIR`: copies a single-server installation into the
/// relational tables of an empty PostgreSQL schema and checks the census of both sides.
fn migrate_data(
    config: &Config,
    from: &str,
    to: Option<String>,
    schema: Option<String>,
) -> anyhow::Result<()> {
    let dir = from
        .strip_prefix("sled:")
        .context("--from takes sled:DIR (the data directory of a single-server installation)")?;
    let dir = std::path::Path::new(dir);
    // The data directory holds the database in `db`; accept either.
    let db = if dir.join("db").join("conf").exists() {
        dir.join("db")
    } else {
        dir.to_path_buf()
    };
    if !db.join("conf").exists() {
        anyhow::bail!("{} holds no chatrelay database", dir.display());
    }
    let mut opts = match (to, config.storage.postgres()) {
        (Some(url), base) => chatrelay_storage::PgOptions {
            url,
            ..base.unwrap_or_else(|| chatrelay_storage::PgOptions::new(""))
        },
        (None, Some(base)) => base,
        (None, None) => anyhow::bail!("--to postgres://... is needed (or [storage] url)"),
    };
    if let Some(schema) = schema {
        opts.schema = Some(schema);
    }
    let schema = opts.schema.clone().unwrap_or_else(|| "public".to_owned());
    let source =
        chatrelay_storage::KvStore::open(&db, config.storage.cache_capacity_mb * 1024 * 1024)
            .with_context(|| format!("opening {} (is the daemon still running?)", db.display()))?;
    let copied = one_shot_runtime()?
        .block_on(chatrelay_storage::copy_into_relational(
            &source,
            &opts,
            |line| {
                let _ = say(&format!("{line}\n"));
            },
        ))
        .with_context(|| format!("copying into the relational tables of schema {schema}"))?;
    say(&format!(
        "{}verified: {}\n",
        copy_table(&copied),
        verified_line(&copied.census)
    ))
}

fn admin(
    config: &Config,
    url: Option<String>,
    token: Option<String>,
    command: AdminCommand,
    json: bool,
) -> anyhow::Result<()> {
    let target = admin_cli::target(config, url, token)?;
    runtime()?.block_on(admin_cli::run(&target, command, json))
}

#[cfg(test)]
mod tests {
    use super::use_colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(
            !use_colour(false, None),
            "a file or journald gets no colour codes"
        );
    }
}

/// glibc's allocator, tuned for a long-running server on a few cores (other C libraries:
/// nothing to do). Giving freed memory back with `malloc_trim` was measured too and changed
/// nothing after 100,000 new followers (the memory is live: the store's cache and index).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod malloc {
    /// At most two arenas, unless the operator set `MALLOC_ARENA_MAX`: glibc's default of
    /// eight per core keeps freed memory in each, and measured under new-follower load two
    /// hold the same work with 25–50 MB less RSS (BENCHMARKS.md).
    pub fn tune() {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets a tunable and is called first thing in main, before
            // any other thread exists or the allocator is busy.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod malloc {
    pub fn tune() {}
}
