"""``groupdistil report`` end to end, as a user runs it: ``python -m groupdistil report ...``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from report_runs import make_study, seeded, write_run

SRC = Path(__file__).resolve().parents[1] / "src"


def groupdistil(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(
        [sys.executable, "-m", "groupdistil", *map(str, args)], capture_output=True, text=True, env=env,
        timeout=120,
    )


def test_report_command_writes_the_report_and_warns_about_unfinished_runs(tmp_path: Path) -> None:
    study = make_study(tmp_path / "runs")
    out = tmp_path / "report"
    result = groupdistil("report", study / "spurious-digits", study / "digits-lt", "--out", out,
                         "--title", "My study")
    assert result.returncode == 0, result.stderr
    unfinished = study / "spurious-digits" / "groupdistil-dro_on=kd" / "seed0"
    warning = f"warning: skipping unfinished run (no final.json): {unfinished}"
    assert result.stderr.strip().splitlines() == [warning]
    assert "25 runs" in result.stdout
    for name in ("report.md", "report.html", "summary.json", "spurious-digits_pareto.png"):
        assert (out / name).stat().st_size > 0, name
    assert "<title>My study</title>" in (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["datasets"]) == ["digits-lt", "spurious-digits"]


def test_missing_run_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = groupdistil("report", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: run directory not found: {tmp_path / 'nowhere'}"]
    assert not (tmp_path / "out").exists()


def test_malformed_final_json_is_one_line_naming_the_file(tmp_path: Path) -> None:
    run = write_run(tmp_path / "runs", role="student", name="erm", method="erm", options={}, seed=0,
                    group_acc=seeded((0.9, 0.8, 0.7, 0.6), 0))
    (run / "final.json").write_text('{"name": "erm", "splits": ')
    result = groupdistil("report", tmp_path / "runs", "--out", tmp_path / "out")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {run / 'final.json'}: not valid JSON")
