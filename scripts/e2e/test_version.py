"""`chatrelay --version`: the crate version, the git commit it was built from and the UTC
build day, so that a bug report or `docker exec chatrelay chatrelay --version` names its
build."""

import datetime
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("CHATRELAY_BIN", ROOT / "target" / "debug" / "chatrelay"))


def cargo_version():
    text = (ROOT / "Cargo.toml").read_text()
    return re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', text, re.M | re.S)[1]


def test_version_names_version_commit_and_build_day():
    r = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"chatrelay (\S+) \(commit (\S+), built (\d{4}-\d{2}-\d{2})\)\n", r.stdout)
    assert m, r.stdout
    version, commit, day = m.groups()
    assert version == cargo_version()
    # Built from this checkout (the test runs right after `cargo build` of it): the commit is
    # HEAD's, unless the build was told another one.
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True)
    if "CHATRELAY_GIT_COMMIT" in os.environ:
        assert commit == os.environ["CHATRELAY_GIT_COMMIT"]
    elif head.returncode == 0:
        assert commit == head.stdout.strip(), (commit, head.stdout)
    built = datetime.date.fromisoformat(day)
    if os.environ.get("CHATRELAY_BUILD_DATE"):
        assert day == os.environ["CHATRELAY_BUILD_DATE"]
    elif "SOURCE_DATE_EPOCH" in os.environ:
        expected = datetime.datetime.fromtimestamp(int(os.environ["SOURCE_DATE_EPOCH"]),
                                                   datetime.timezone.utc).date()
        assert built == expected
    else:
        # The binary was built before this test ran, and not long before.
        today = datetime.datetime.now(datetime.timezone.utc).date()
        assert today - datetime.timedelta(days=30) <= built <= today, day


def test_version_needs_no_config_or_data(tmp_path):
    """`--version` works anywhere: no config file, no data directory is created."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATRELAY")}
    env["CHATRELAY_CONFIG"] = str(tmp_path / "missing.toml")
    r = subprocess.run([str(BINARY), "--version"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("chatrelay "), (r.stdout, r.stderr)
    assert list(tmp_path.iterdir()) == []
