//! The admin CLI: a client of the running daemon's admin API (the daemon holds the
//! database lock, so the CLI never opens the database itself). Output is a table (or a short
//! summary) for people, and the API's JSON with `--json` for scripts.
//!
//! - [`commands`]: the clap types, and for each command its request ([`AdminCommand::call`]).
//! - [`client`]: where the daemon is, the HTTP calls, and what an error answer becomes.
//! - [`render`]: for each command, how a person sees its answer ([`render::human`]).

pub mod client;
pub mod commands;
pub mod render;

use anyhow::Context;

pub use client::{Target, target};
pub use commands::{
    AdminCommand, CodesCommand, OrderCommand, OrderFilter, TokenCommand, UserCommand, ZsxqCommand,
};

/// Runs one admin command and prints its result on stdout: the API's JSON with `json`, a
/// table or summary otherwise.
pub async fn run(target: &Target, command: AdminCommand, json: bool) -> anyhow::Result<()> {
    let human = render::human(&command);
    let Some(value) = client::Api::new(target)?.execute(command.call()).await? else {
        return Ok(());
    };
    let out = if json {
        render::pretty(&value)
    } else {
        human.show(&value)
    };
    // The CLI's output is its interface: written to stdout, not logged.
    let mut stdout = std::io::stdout().lock();
    std::io::Write::write_all(&mut stdout, format!("{}\n", out.trim_end()).as_bytes())
        .context("writing to stdout")
}
