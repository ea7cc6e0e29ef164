# Sourced by the Official Account benchmarks (mp_throughput.sh, pg.sh): the daemon
# configuration they share, so that their figures compare the same setup.
#
# $aes: the account's EncodingAESKey (mp_load needs it too).
# oa_toml PORT DATA_DIR [STORAGE_KEYS] [LLM_SECTION]: the configuration, on stdout. Without an
# LLM section, the instant demo provider answers.

aes=$(python3 -c 'import base64; print(base64.b64encode(bytes(range(32))).decode().rstrip("="))')

oa_toml() {
  local llm="${4:-}"
  [ -n "$llm" ] || llm=$(printf '[llm]\nprovider = "demo"\ndemo_piece_delay_ms = 0')
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
admin_token = "bench-admin-token-0123456789"
[storage]
path = "$2"
${3:-}
$llm
[quota]
free_daily = 1000000
[bot]
rate_limit_per_minute = 0
[log]
level = "warn"
[[wechat_mp]]
id = "bench"
app_id = "wx1234567890abcdef"
token = "bench-token"
encoding_aes_key = "$aes"
TOML
}

# BENCH_PROFILE=debug runs on debug builds (the e2e smoke runs); figures come from release.
profile="${BENCH_PROFILE:-release}"
release=$([ "$profile" = release ] && echo --release || true)
