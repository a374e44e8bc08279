"""`unggah election example` gives a new stack an election it can start with, and
`unggah up --election` refuses a file it cannot use before anything starts."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

from dukungan.election import load_election
from dukungan.generate import generate, write_csv
from dukungan.preflight import check_file
from dukungan.rules import prepare
from dukungan.windows import window_state


def unggah(*args: str, cwd, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNGGAH_")}
    env["UNGGAH_STATE_DIR"] = str(cwd / "state")
    return subprocess.run([sys.executable, "-m", "commands.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_the_example_election_loads_is_open_today_and_judges_a_list(tmp_path):
    done = unggah("election", "example", "--codes", "codes.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (tmp_path / "election.toml").write_text(done.stdout, encoding="utf-8")
    assert "INVENTED" in done.stdout, "an invented code list must say so"
    e = load_election(tmp_path / "election.toml")
    now = dt.datetime.now(e.tz) + dt.timedelta(minutes=1)
    assert window_state(e, "paslon-01", now).open, "a demo stack would refuse every upload"
    ctx = prepare(e)
    write_csv(tmp_path / "daftar.csv", generate(ctx, 30, seed=2).rows)
    report = check_file(tmp_path / "daftar.csv", ctx)
    assert not report.rejected and report.counts["MS"] > 0


def test_without_codes_the_example_points_at_the_commission_list(tmp_path):
    done = unggah("election", "example", cwd=tmp_path)
    assert done.returncode == 0 and 'path = "wilayah-kepmendagri.csv"' in done.stdout
    assert "INVENTED" not in done.stdout and not (tmp_path / "wilayah-kepmendagri.csv").exists()


def test_up_with_an_election_it_cannot_use_says_why_and_starts_nothing(tmp_path):
    (tmp_path / "election.toml").write_text('name = "x"\nlevel = "lurah"\n', encoding="utf-8")
    done = unggah("up", "--election", "election.toml", "--port", "1", cwd=tmp_path,
                  timeout=30)
    assert done.returncode == 2
    assert "election file cannot be used" in done.stderr and "level" in done.stderr
    assert not (tmp_path / "state").exists()
