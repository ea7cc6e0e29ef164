#!/usr/bin/env bash
# Installs chatrelay as a systemd service (or removes it with --uninstall).
#
#   scripts/install.sh                 build (cargo build --release --locked) and install
#   scripts/install.sh --static        build the static binary (scripts/build-static) and
#                                      install it: it runs on any x86_64 Linux
#   scripts/install.sh --no-build      install the existing target/release/chatrelay
#   CHATRELAY_BIN=/path/chatrelay scripts/install.sh    install that binary, no build
#   scripts/install.sh --uninstall     stop, disable, remove binary and unit; keep config+data
#
# Environment:
#   DESTDIR        staging root (packaging, tests); with it, no user is created and
#                  systemctl is never called
#   PREFIX         binary prefix, default /usr/local (the unit's ExecStart expects
#                  /usr/local/bin/chatrelay: change both together)
#   CHATRELAY_BIN  a binary to install instead of building one
#
# Layout: ${PREFIX}/bin/chatrelay, /etc/systemd/system/chatrelay.service,
# /etc/chatrelay/chatrelay.toml (only when absent: never overwritten), /var/lib/chatrelay.
# Running it twice is fine.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/usr/local}"

BIN_PATH="${DESTDIR}${PREFIX}/bin/chatrelay"
UNIT_PATH="${DESTDIR}/etc/systemd/system/chatrelay.service"
CONF_DIR="${DESTDIR}/etc/chatrelay"
CONF_PATH="${CONF_DIR}/chatrelay.toml"
STATE_DIR="${DESTDIR}/var/lib/chatrelay"
SERVICE_USER=chatrelay

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
}

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

build=1
static=0
action=install
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --static) static=1 ;;
    --uninstall) action=uninstall ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

# Talk to systemd only on the real root filesystem, and only where systemd is (and runs:
# /run/systemd/system exists only when systemd is PID 1, not in most containers).
live_systemd() {
  [ -z "$DESTDIR" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]
}

run() {
  say "+ $*"
  "$@"
}

uninstall() {
  if live_systemd; then
    run systemctl disable --now chatrelay || say "(chatrelay was not enabled or running)"
  fi
  for f in "$BIN_PATH" "$UNIT_PATH"; do
    if [ -e "$f" ] || [ -L "$f" ]; then
      run rm -f "$f"
    else
      say "already absent: $f"
    fi
  done
  if live_systemd; then
    run systemctl daemon-reload
  fi
  say "kept ${CONF_DIR} (configuration, secrets) and ${STATE_DIR} (the database):"
  say "remove them by hand to delete everything."
}

install_all() {
  local src
  if [ -n "${CHATRELAY_BIN:-}" ]; then
    src="$CHATRELAY_BIN"
    [ -x "$src" ] || die "CHATRELAY_BIN=$src is not an executable file"
    say "using CHATRELAY_BIN=$src (no build)"
  elif [ "$build" = 1 ] && [ "$static" = 1 ]; then
    (cd "$ROOT" && run scripts/build-static)
    src="$ROOT/target/x86_64-unknown-linux-gnu/release/chatrelay"
  elif [ "$build" = 1 ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust, or pass --no-build / CHATRELAY_BIN)"
    (cd "$ROOT" && run cargo build --release --locked --bin chatrelay)
    src="$ROOT/target/release/chatrelay"
  else
    src="$ROOT/target/release/chatrelay"
    [ -x "$src" ] || die "--no-build: $src does not exist (build it first or set CHATRELAY_BIN)"
  fi

  # The service user (skipped under DESTDIR: a package's postinst does that).
  if [ -z "$DESTDIR" ] && ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    local nologin
    nologin="$(command -v nologin || echo /usr/sbin/nologin)"
    run useradd --system --user-group --home-dir /var/lib/chatrelay --no-create-home \
      --shell "$nologin" --comment "chatrelay daemon" "$SERVICE_USER"
  fi

  # install(1) writes a new file and renames it, so a running binary is replaced safely.
  run install -d -m 0755 "$(dirname "$BIN_PATH")"
  run install -m 0755 "$src" "$BIN_PATH"

  run install -d -m 0755 "$(dirname "$UNIT_PATH")"
  run install -m 0644 "$ROOT/systemd/chatrelay.service" "$UNIT_PATH"

  # Existing config and state are left exactly as they are (content, owner, mode).
  # Owners (only on the real root): the service reads its config through its group and
  # owns its state directory.
  local owned=0
  if [ -z "$DESTDIR" ] && id -u "$SERVICE_USER" >/dev/null 2>&1; then owned=1; fi
  if [ -d "$CONF_DIR" ]; then
    say "keeping existing directory ${CONF_DIR}"
  else
    run install -d -m 0750 "$CONF_DIR"
    if [ "$owned" = 1 ]; then run chown root:"$SERVICE_USER" "$CONF_DIR"; fi
  fi
  if [ -e "$CONF_PATH" ]; then
    say "kept the existing ${CONF_PATH} (never overwritten; the current example is"
    say "  ${ROOT}/systemd/chatrelay.example.toml)"
  else
    run install -m 0640 "$ROOT/systemd/chatrelay.example.toml" "$CONF_PATH"
    if [ "$owned" = 1 ]; then run chown root:"$SERVICE_USER" "$CONF_PATH"; fi
  fi

  if [ -d "$STATE_DIR" ]; then
    say "keeping existing ${STATE_DIR}"
  else
    run install -d -m 0700 "$STATE_DIR"
    if [ "$owned" = 1 ]; then run chown "$SERVICE_USER":"$SERVICE_USER" "$STATE_DIR"; fi
  fi

  if live_systemd; then
    local was_active=0
    if systemctl is-active --quiet chatrelay; then was_active=1; fi
    run systemctl daemon-reload
    run systemctl enable --now chatrelay
    # enable --now does not restart a running service: pick up the new binary and unit.
    if [ "$was_active" = 1 ]; then run systemctl restart chatrelay; fi
    say "chatrelay is running: systemctl status chatrelay; journalctl -u chatrelay -f"
  elif [ -n "$DESTDIR" ]; then
    say "installed into DESTDIR=${DESTDIR}; systemctl not called"
  else
    say "systemd is not running here (or systemctl is missing): start it yourself:"
    say "  ${PREFIX}/bin/chatrelay --config /etc/chatrelay/chatrelay.toml run"
  fi
  say "check the configuration with:"
  say "  ${PREFIX}/bin/chatrelay --config /etc/chatrelay/chatrelay.toml check-config"
}

case "$action" in
  install) install_all ;;
  uninstall) uninstall ;;
esac
