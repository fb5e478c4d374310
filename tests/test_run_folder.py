"""The run folder: --force replaces only a run groupdistil made, after every input is checked, and
atomically; --resume is idempotent and refuses a changed trajectory (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from groupdistil.cli.app import run_app
from groupdistil.config import RunConfig
from groupdistil.errors import UserError
from groupdistil.runs.rundir import MARKER, RunPaths, close_out, open_out, plan_out, trajectory_keys

FAST = ["--dataset", "spurious-digits", "--model", "mlp-small", "--epochs", "1", "--quiet"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): what 'left as it was' compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, code: int, argv: list[str], expect: str) -> str:
    assert run_app(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "Traceback" not in err, err
    assert expect in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_app(["train", *FAST, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of a finished run."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


# ---- --force never deletes what groupdistil did not make --------------------------------------------


def test_force_on_a_users_folder_refuses_and_touches_nothing(tmp_path, capsys):
    docs = tmp_path / "Documents"
    (docs / "taxes").mkdir(parents=True)
    (docs / "taxes" / "2025.pdf").write_bytes(b"%PDF precious")
    (docs / "notes.txt").write_text("mine")
    before = snapshot(docs)
    one_line_error(capsys, 2, ["train", *FAST, "--out", str(docs), "--force"],
                   "is not a groupdistil run folder")
    assert snapshot(docs) == before
    # With a bad input as well, which used to fail only after the folder was gone.
    one_line_error(capsys, 2, ["train", *FAST, "--model", "nope", "--out", str(docs), "--force"], "--out")
    assert snapshot(docs) == before


@pytest.mark.parametrize("bad,expect", [
    (["--model", "nope"], "--model: unknown name 'nope'"),
    (["--dataset", "manifest", "--root", "/nonexistent/m.csv"], "m.csv"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--method", "group-dro", "--beta", "0.5"], "--beta: does not apply"),
])
def test_force_with_a_bad_input_leaves_the_finished_run_byte_identical(run, capsys, bad, expect):
    before = snapshot(run)
    one_line_error(capsys, 2, ["train", *FAST, *bad, "--out", str(run), "--force"], expect)
    assert snapshot(run) == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]  # no staging folder left behind


def test_force_with_a_bad_teacher_leaves_the_finished_run_byte_identical(run, tmp_path, capsys):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"not a checkpoint")
    before = snapshot(run)
    one_line_error(capsys, 2, ["distill", *FAST, "--teacher", str(bad), "--out", str(run), "--force"],
                   "teacher.pt: corrupt or truncated")
    assert snapshot(run) == before


def test_force_replaces_a_finished_run_atomically(run, capsys):
    old = json.loads((run / "final.json").read_text())
    assert run_app(["train", *FAST, "--lr", "0.01", "--out", str(run), "--force"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 0.01
    assert (run / MARKER).is_file() and json.loads((run / "final.json").read_text()) != old
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]  # staging and the old run are gone


def test_a_failed_force_leaves_the_finished_run_as_it_was(run, capsys, monkeypatch):
    # The new run fails at its third step (a non-finite loss): exit 3, and the old run is untouched.
    before = snapshot(run)
    monkeypatch.setenv("GROUPDISTIL_NAN_AT", "3")
    assert run_app(["train", *FAST, "--out", str(run), "--force"]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss at step 3" in err and f"{run} is as it was" in err and ".run.new" not in err
    assert snapshot(run) == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]


@pytest.mark.slow
def test_a_force_killed_midway_leaves_the_finished_run_and_the_next_force_finishes(run):
    before = snapshot(run)
    env = dict(os.environ, PYTHONPATH=SRC, GROUPDISTIL_KILL_AT="step:3")
    args = [sys.executable, "-m", "groupdistil", "train", *FAST, "--out", str(run), "--force"]
    assert subprocess.run(args, env=env, capture_output=True, timeout=300).returncode == -signal.SIGKILL
    assert snapshot(run) == before
    assert (run.parent / ".run.new" / MARKER).is_file()  # the killed attempt's staging folder
    env.pop("GROUPDISTIL_KILL_AT")
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]
    assert (run / "final.json").is_file()


@pytest.mark.parametrize("out", ["", "."])
def test_an_empty_or_current_out_is_refused(tmp_path, monkeypatch, capsys, out):
    (tmp_path / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, 2, ["train", *FAST, "--out", out, "--force"], "is the current folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_the_current_folder_by_its_absolute_path_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, 2, ["train", *FAST, "--out", str(tmp_path), "--force"], "is the current folder")


def test_demo_refuses_an_empty_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, 2, ["demo", "--out", "", "--seeds", "1", "--epochs", "1"], "is the current folder")
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    one_line_error(capsys, 2, ["train", *FAST, "--out", str(tmp_path / "f"), "--force"],
                   "is an existing file; expected a folder")
    assert (tmp_path / "f").read_text() == "x"


def test_without_force_a_non_empty_foreign_folder_is_refused(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "metrics.jsonl").write_text("their own\n")
    one_line_error(capsys, 2, ["train", *FAST, "--out", str(tmp_path / "data")], "choose a new or empty folder")
    assert (tmp_path / "data" / "metrics.jsonl").read_text() == "their own\n"


# ---- which folders are ours -------------------------------------------------------------------------


def _legacy(root: Path) -> Path:
    """A run folder as written before the marker existed (killed after its first epoch)."""
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "last.pt").write_bytes(b"x")
    (root / "tb").mkdir()
    (root / "tb" / "events.out.tfevents.1.host").write_bytes(b"e")
    (root / "config.yaml").write_text(yaml.safe_dump(RunConfig(out=root).model_dump(mode="json")))
    (root / "metrics.jsonl").write_text('{"epoch": 0}\n')
    return root


def test_a_run_folder_from_before_the_marker_is_recognised(tmp_path):
    assert RunPaths(_legacy(tmp_path / "old")).foreign() is None
    plan = plan_out(RunConfig(out=tmp_path / "old", force=True))
    assert plan.replaces and plan.work == tmp_path / ".old.new"


@pytest.mark.parametrize("change,why", [
    (lambda r: (r / "notes.txt").write_text("mine"), "holds notes.txt"),
    (lambda r: (r / "checkpoints" / "other-model.pt").write_bytes(b"x"), "holds checkpoints/other-model.pt"),
    (lambda r: (r / "tb" / "my-plot.png").write_bytes(b"x"), "holds tb/my-plot.png"),
    (lambda r: (r / "config.yaml").write_text("lr: 0.1\nepochs: 3\n"), "no .groupdistil-run marker"),
    (lambda r: (r / "config.yaml").unlink(), "no .groupdistil-run marker"),
])
def test_anything_a_run_does_not_write_makes_a_folder_not_ours(tmp_path, change, why):
    root = _legacy(tmp_path / "old")
    change(root)
    before = snapshot(root)
    with pytest.raises(UserError, match=why):
        plan_out(RunConfig(out=root, force=True))
    (root / MARKER).write_text("x")  # the marker does not make a user's file ours either
    if "marker" not in why:
        with pytest.raises(UserError, match=why):
            plan_out(RunConfig(out=root, force=True))
    (root / MARKER).unlink()
    assert snapshot(root) == before


def test_a_swap_cut_short_by_a_kill_is_finished_by_the_next_run(tmp_path):
    paths = RunPaths(tmp_path / "run")
    for folder, tag in ((paths.aside, "old"), (paths.staging, "new")):
        folder.mkdir()
        (folder / MARKER).write_text("m")
        (folder / "final.json").write_text(tag)
    # Killed between the two renames: the run folder is missing, the finished new run waits.
    plan_out(RunConfig(out=paths.root, resume=True))
    assert paths.final.read_text() == "new" and not paths.aside.exists() and not paths.staging.exists()
    # Killed while the old run was being removed: the remains go.
    paths.aside.mkdir()
    (paths.aside / MARKER).write_text("m")
    plan_out(RunConfig(out=paths.root, resume=True))
    assert not paths.aside.exists() and paths.final.read_text() == "new"


def test_a_failed_replacing_run_is_dropped_and_a_finished_one_swapped_in(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / MARKER).write_text("m")
    (root / "final.json").write_text("old")
    plan = plan_out(RunConfig(out=root, force=True))
    open_out(plan)
    (plan.work / "final.json").write_text("new")
    close_out(plan, ok=False)
    assert (root / "final.json").read_text() == "old" and not plan.work.exists()
    open_out(plan)
    (plan.work / "final.json").write_text("new")
    close_out(plan, ok=True)
    assert (root / "final.json").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["run"]


# ---- --resume -----------------------------------------------------------------------------------------


@pytest.fixture
def unfinished(run) -> Path:
    (run / "final.json").unlink()
    return run


@pytest.mark.parametrize("changed,expect", [
    (["--lr", "0.1"], "--lr is 0.1, the run in"),
    (["--batch-size", "32"], "--batch-size 32 on 1 process(es) differs from the run's recorded 64"),
    (["--seed", "1"], "--seed is 1, the run in"),
    (["--sampler", "group-balanced"], '--sampler is "group-balanced"'),
    (["--epochs", "3"], "--epochs is 3, the run in"),
    (["--schedule", "step"], '--schedule is "step"'),
    (["--method", "group-dro"], '--method is "group-dro"'),
    (["--optimizer", "adamw"], '--optimizer is "adamw"'),
])
def test_resume_with_a_changed_trajectory_is_refused(unfinished, capsys, changed, expect):
    before = snapshot(unfinished)
    err = one_line_error(capsys, 2, ["train", *FAST, *changed, "--out", str(unfinished), "--resume"], expect)
    assert "recorded" in err
    assert snapshot(unfinished) == before


def test_resume_may_add_epochs_when_the_schedule_does_not_span_them(tmp_path):
    args = ["train", *FAST, "--schedule", "constant", "--out", str(tmp_path / "r")]
    assert run_app(args) == 0
    (tmp_path / "r" / "final.json").unlink()
    assert run_app([*args, "--epochs", "2", "--resume"]) == 0
    assert json.loads((tmp_path / "r" / "final.json").read_text())["selected_epoch"] in (0, 1)
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 6  # 2 epochs x (train, val, time)


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path, capsys):
    args = ["train", *FAST, "--schedule", "constant", "--epochs", "2", "--out", str(tmp_path / "r")]
    assert run_app(args) == 0
    (tmp_path / "r" / "final.json").unlink()
    one_line_error(capsys, 2, [*args, "--epochs", "1", "--resume"], "has completed 2 epochs already")


def test_resume_of_a_finished_run_exits_0_and_changes_nothing(run, capsys):
    before = snapshot(run)
    assert run_app(["train", *FAST, "--out", str(run), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "is finished (final.json); nothing to do" in captured.err and "wrote" not in captured.out
    assert snapshot(run) == before


def test_resume_of_a_folder_that_does_not_exist_starts_the_run(tmp_path, capsys):
    assert run_app(["train", *FAST, "--out", str(tmp_path / "new"), "--resume"]) == 0
    assert "starting the run from the beginning" in capsys.readouterr().err
    assert (tmp_path / "new" / "final.json").is_file() and (tmp_path / "new" / MARKER).is_file()


def test_the_kept_keys_cover_the_trajectory():
    keys = set(trajectory_keys())
    assert {"optim.lr", "optim.schedule", "train.seed", "train.sampler", "objective.method",
            "objective.step_size", "data.dataset", "model.name"} <= keys
    assert not keys & {"data.root", "train.device", "train.num_workers", "out", "train.epochs"}
