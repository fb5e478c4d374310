"""SIGKILL at several points, resume each time: the result is identical to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from groupdistil.checkpoint import load_checkpoint
from groupdistil.config import RunConfig
from groupdistil.errors import UserError
from groupdistil.runs.rundir import ELASTIC_MARKER, MARKER, open_out, plan_out

SRC = str(Path(__file__).resolve().parents[1] / "src")
pytestmark = pytest.mark.slow


def cli(*args: str, kill_at: str | None = None, nan_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("GROUPDISTIL_KILL_AT", None)
    env.pop("GROUPDISTIL_NAN_AT", None)
    if kill_at is not None:
        env["GROUPDISTIL_KILL_AT"] = kill_at
    if nan_at is not None:
        env["GROUPDISTIL_NAN_AT"] = nan_at
    return subprocess.run([sys.executable, "-m", "groupdistil", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return teacher_and_full_run(tmp_path_factory.mktemp("crash"))


def teacher_and_full_run(root: Path) -> tuple[Path, list[str]]:
    """A 1-epoch teacher and the uninterrupted 3-epoch GroupDistil student (``root/full``) that the
    interrupted runs are compared with; (root, the student's arguments without --out)."""
    teacher = root / "teacher"
    r = cli("train", "--dataset", "spurious-digits", "--model", "mlp-small", "--epochs", "1", "--quiet",
            "--out", str(teacher))
    assert r.returncode == 0, r.stderr
    student = ["distill", "--dataset", "spurious-digits", "--model", "mlp-small", "--epochs", "3", "--quiet",
               "--method", "groupdistil", "--step-size", "0.2", "--teacher", str(teacher / "checkpoints/best.pt"),
               "--teacher-cache-dir", str(root / "cache")]
    full = cli(*student, "--out", str(root / "full"))
    assert full.returncode == 0, full.stderr
    return root, student


def _measured_out(path: Path) -> str:
    """A run's file without what is measured, not computed (metrics.jsonl's ``time`` lines, final.json's
    ``time``): those differ between runs that are otherwise byte for byte the same."""
    text = path.read_text()
    if path.name == "final.json":
        return json.dumps({k: v for k, v in json.loads(text).items() if k != "time"})
    if path.name == "metrics.jsonl":
        return "".join(x + "\n" for x in text.splitlines() if json.loads(x)["split"] != "time")
    return text


def _same_run(a: Path, b: Path) -> None:
    for name in ("final.json", "metrics.jsonl", "group_weights.csv"):
        assert _measured_out(a / name) == _measured_out(b / name), name
    for ck in ("best.pt", "last.pt"):
        x, y = load_checkpoint(a / "checkpoints" / ck), load_checkpoint(b / "checkpoints" / ck)
        assert x.keys() == y.keys()
        for k in x["model"]:
            assert torch.equal(x["model"][k], y["model"][k]), (ck, k)
        assert torch.equal(x["objective"]["dro.q"], y["objective"]["dro.q"])


def test_killed_three_times_then_resumed_equals_uninterrupted(runs):
    root, student = runs
    out = root / "killed"
    steps_per_epoch = -(-898 // 64)
    # 1: mid-epoch, in the second epoch (epoch 0's checkpoint exists).
    r = cli(*student, "--out", str(out), kill_at=f"step:{steps_per_epoch + 5}")
    assert r.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "checkpoints/last.pt")["epoch"] == 0
    # 2: during the write of epoch 1's last.pt: the temporary file is complete, the rename never happens.
    r = cli(*student, "--out", str(out), "--resume", kill_at="replace:last.pt:1")
    assert r.returncode == -signal.SIGKILL
    assert list((out / "checkpoints").glob(".last.pt.*.tmp")), "the interrupted write left its temp file"
    assert load_checkpoint(out / "checkpoints/last.pt")["epoch"] == 0  # the old file is intact
    # 3: right after the last epoch's checkpoint, before final.json.
    r = cli(*student, "--out", str(out), "--resume", kill_at="epoch:2")
    assert r.returncode == -signal.SIGKILL
    assert not (out / "final.json").exists()
    assert not list((out / "checkpoints").glob(".*.tmp")), "resume removes stale temporary files"
    r = cli(*student, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    _same_run(root / "full", out)


def test_killed_before_the_first_checkpoint_resume_starts_again(runs):
    root, student = runs
    out = root / "early"
    assert cli(*student, "--out", str(out), kill_at="step:3").returncode == -signal.SIGKILL
    # A requeued job always passes --resume: with no epoch ended it starts the run again, and says so.
    r = cli(*student, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert "no epoch of a run in" in r.stderr and "starting the run from the beginning" in r.stderr
    _same_run(root / "full", out)
    # Resumed again, the finished run is left as it is: exit 0 and a note.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = cli(*student, "--out", str(out), "--resume")
    assert r.returncode == 0 and "is finished (final.json); nothing to do" in r.stderr, r.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_nonfinite_loss_exits_3_naming_step_and_last_good_checkpoint(runs, tmp_path):
    _, student = runs
    out = tmp_path / "nan"
    r = cli(*student, "--out", str(out), nan_at="20")
    assert r.returncode == 3, r.stderr
    assert r.stderr.count("\n") == 1
    assert "non-finite loss at step 20 (epoch 2)" in r.stderr and str(out / "checkpoints" / "last.pt") in r.stderr
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 0  # kept, and loadable
    r = cli(*student, "--out", str(tmp_path / "skip"), "--skip-nonfinite", nan_at="5,20")
    assert r.returncode == 0, r.stderr
    final = json.loads((tmp_path / "skip" / "final.json").read_text())
    assert final["skipped_steps"] == 2
    last_train = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()][-3]
    assert last_train["split"] == "train" and last_train["skipped_steps"] == 2


# ---- torchrun --max-restarts: a restarted attempt continues its own job's run, and only that -------


def _unfinished(out: Path, marker: str | None) -> Path:
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"x")
    if marker is not None:
        (out / ELASTIC_MARKER).write_text(marker)
    return out


def prepare_out(cfg: RunConfig) -> bool:
    """The run folder as run_experiment prepares it; True when the run resumes."""
    plan = plan_out(cfg)
    open_out(plan)
    return plan.resume


def _job(monkeypatch, run_id: str, restart: int, max_restarts: int = 3) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restart))
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", str(max_restarts))


def test_a_restarted_attempt_resumes_its_own_jobs_run(tmp_path, monkeypatch):
    out = _unfinished(tmp_path / "run", marker="job-a")
    _job(monkeypatch, "job-a", restart=1)
    # --force is the first attempt's: it must not wipe the checkpoint the job has made since.
    assert prepare_out(RunConfig(out=out, force=True)) is True
    assert (out / "checkpoints" / "last.pt").exists()


def test_a_restart_before_the_first_checkpoint_starts_again_in_a_cleared_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 0}\n')
    (out / ELASTIC_MARKER).write_text("job-a")
    _job(monkeypatch, "job-a", restart=2)
    assert prepare_out(RunConfig(out=out)) is False
    assert sorted(p.name for p in out.iterdir()) == [MARKER, ELASTIC_MARKER]


@pytest.mark.parametrize("marker,restart,max_restarts", [
    ("job-b", 1, 3),  # another job's folder
    (None, 1, 3),  # a folder no elastic job wrote
    ("job-a", 0, 3),  # the first attempt: a folder left by an earlier launch with the same id
    ("job-a", 1, 0),  # not an elastic launch
])
def test_other_folders_are_treated_as_usual(tmp_path, monkeypatch, marker, restart, max_restarts):
    out = _unfinished(tmp_path / "run", marker=marker)
    _job(monkeypatch, "job-a", restart=restart, max_restarts=max_restarts)
    with pytest.raises(UserError, match="holds an unfinished run; pass `resume`"):
        prepare_out(RunConfig(out=out))


def test_the_first_attempt_of_an_elastic_job_marks_the_folder(tmp_path, monkeypatch):
    _job(monkeypatch, "job-a", restart=0)
    assert prepare_out(RunConfig(out=tmp_path / "run")) is False
    assert (tmp_path / "run" / ELASTIC_MARKER).read_text() == "job-a"
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    assert prepare_out(RunConfig(out=tmp_path / "other")) is False
    assert not (tmp_path / "other" / ELASTIC_MARKER).exists()  # no job id without restarts


def test_a_restart_continues_the_run_its_job_was_writing_beside_the_one_it_replaces(tmp_path, monkeypatch):
    # The first attempt had --force on a finished run: it wrote the new run into .run.new, then failed.
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text("m")
    (out / "final.json").write_text("{}")
    _unfinished(tmp_path / ".run.new", marker="job-a")
    _job(monkeypatch, "job-a", restart=1)
    plan = plan_out(RunConfig(out=out, force=True))
    assert plan.resume and plan.work == tmp_path / ".run.new" and plan.replaces
    assert (out / "final.json").read_text() == "{}"  # the old run stays until the new one is finished
