"""scripts/install.sh into a scratch DESTDIR: the files, their modes, the config kept on a
second install, --uninstall keeping config and state, and the systemd unit itself."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("CHATRELAY_BIN", ROOT / "target" / "debug" / "chatrelay"))
INSTALL = ROOT / "scripts" / "install.sh"
UNIT_SRC = ROOT / "systemd" / "chatrelay.service"
EXAMPLE = ROOT / "systemd" / "chatrelay.example.toml"


def install(destdir, *args, check=True):
    env = dict(os.environ, DESTDIR=str(destdir), CHATRELAY_BIN=str(BINARY))
    env.pop("PREFIX", None)
    r = subprocess.run(["bash", str(INSTALL), *args], env=env, capture_output=True,
                       text=True, timeout=120)
    if check:
        assert r.returncode == 0, f"install.sh {args} failed:\n{r.stdout}\n{r.stderr}"
    return r


def paths(d):
    return {
        "bin": d / "usr/local/bin/chatrelay",
        "unit": d / "etc/systemd/system/chatrelay.service",
        "conf_dir": d / "etc/chatrelay",
        "conf": d / "etc/chatrelay/chatrelay.toml",
        "state": d / "var/lib/chatrelay",
    }


def mode(p):
    return stat.S_IMODE(p.stat().st_mode)


def clean_env():
    """No environment that would change what check-config sees."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("CHATRELAY") and k != "OPENAI_API_KEY"}


@pytest.fixture
def installed(tmp_path):
    dest = tmp_path / "root"
    r = install(dest)
    return dest, paths(dest), r


def test_install_lays_out_files_with_modes(installed):
    _, p, r = installed
    assert p["bin"].is_file() and mode(p["bin"]) == 0o755
    assert p["unit"].read_text() == UNIT_SRC.read_text() and mode(p["unit"]) == 0o644
    assert p["conf"].read_text() == EXAMPLE.read_text() and mode(p["conf"]) == 0o640
    assert mode(p["conf_dir"]) == 0o750
    assert p["state"].is_dir() and mode(p["state"]) == 0o700
    # DESTDIR: systemd is never touched.
    assert "systemctl" not in "\n".join(
        line for line in r.stdout.splitlines() if line.startswith("+ "))


def test_installed_binary_runs(installed):
    _, p, _ = installed
    r = subprocess.run([str(p["bin"]), "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("chatrelay "), r.stdout


def test_installed_example_config_passes_check_config(installed):
    _, p, _ = installed
    r = subprocess.run([str(p["bin"]), "--config", str(p["conf"]), "check-config"],
                       capture_output=True, text=True, timeout=30, env=clean_env())
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "configuration OK" in r.stdout
    assert 'path = "/var/lib/chatrelay"' in r.stdout
    assert 'listen = "127.0.0.1:8080"' in r.stdout


def test_unit_matches_the_config_layout():
    unit = UNIT_SRC.read_text()
    lines = {line.strip() for line in unit.splitlines()}
    for want in ["Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure",
                 "TimeoutStopSec=20", "StateDirectory=chatrelay",
                 "WorkingDirectory=/var/lib/chatrelay", "CapabilityBoundingSet=",
                 "ExecStart=/usr/local/bin/chatrelay --config /etc/chatrelay/chatrelay.toml run"]:
        assert want in lines, want
    example = EXAMPLE.read_text()
    assert 'path = "/var/lib/chatrelay"' in example


def test_second_install_keeps_modified_config(installed):
    dest, p, _ = installed
    custom = p["conf"].read_text().replace("free_daily = 10", "free_daily = 3")
    assert custom != EXAMPLE.read_text()
    p["conf"].write_text(custom)
    (p["state"] / "db-marker").write_text("data")
    r = install(dest)
    assert p["conf"].read_text() == custom
    assert "kept the existing" in r.stdout
    assert (p["state"] / "db-marker").read_text() == "data"
    assert p["bin"].is_file() and p["unit"].is_file()


def test_uninstall_removes_binary_and_unit_keeps_config_and_state(installed):
    dest, p, _ = installed
    (p["state"] / "db-marker").write_text("data")
    r = install(dest, "--uninstall")
    assert not p["bin"].exists()
    assert not p["unit"].exists()
    assert p["conf"].read_text() == EXAMPLE.read_text()
    assert (p["state"] / "db-marker").read_text() == "data"
    assert "kept" in r.stdout
    # Uninstalling again is fine.
    install(dest, "--uninstall")


def test_help_and_bad_argument(tmp_path):
    r = install(tmp_path, "--help")
    assert "--uninstall" in r.stdout and "CHATRELAY_BIN" in r.stdout
    assert not (tmp_path / "usr").exists()
    r = install(tmp_path, "--bogus", check=False)
    assert r.returncode != 0 and "unknown argument" in r.stderr


def test_no_build_without_release_binary_fails_clearly(tmp_path):
    if (ROOT / "target" / "release" / "chatrelay").exists():
        pytest.skip("target/release/chatrelay exists, so --no-build would install it")
    env = dict(os.environ, DESTDIR=str(tmp_path))
    env.pop("CHATRELAY_BIN", None)
    r = subprocess.run(["bash", str(INSTALL), "--no-build"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "--no-build" in r.stderr
    assert not (tmp_path / "usr").exists()


def test_systemd_analyze_verify_installed_unit(installed):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: package systemd); "
                    "the unit is not verified")
    dest, p, _ = installed
    # verify checks that ExecStart's binary exists: point it at the DESTDIR copy.
    unit = p["unit"].read_text()
    assert "ExecStart=/usr/local/bin/chatrelay " in unit
    checked = dest / "verify" / "chatrelay.service"
    checked.parent.mkdir()
    checked.write_text(unit.replace("ExecStart=/usr/local/bin/chatrelay ",
                                    f"ExecStart={p['bin']} "))
    r = subprocess.run([analyze, "verify", str(checked)], capture_output=True, text=True,
                       timeout=60)
    # Unknown keys and bad values are only warnings (exit 0): fail on any line about the unit.
    about_unit = [line for line in (r.stdout + r.stderr).splitlines()
                  if "chatrelay.service" in line]
    assert r.returncode == 0 and not about_unit, f"{r.stdout}\n{r.stderr}"
