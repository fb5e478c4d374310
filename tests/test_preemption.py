"""Pre-emption with real signals sent to a real run: SIGTERM or SIGUSR1 stop it after the current step with
a resumable checkpoint, one line saying how to continue, and exit code 75; resumed (from the middle of an
epoch too), the run ends exactly as an uninterrupted one (docs/reliability.md)."""

from __future__ import annotations

import shlex
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from groupdistil.checkpoint import load_checkpoint
from groupdistil.training.preempt import EXIT_CODE
from test_crash_safety import _measured_out, cli, teacher_and_full_run
from test_run_lock import paused_run

pytestmark = pytest.mark.slow
STEPS_PER_EPOCH = -(-898 // 64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return teacher_and_full_run(tmp_path_factory.mktemp("preempt"))


def same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same run: logs byte for byte but for what is measured (time), weights
    and q/lambda bit for bit."""
    for name in ("final.json", "metrics.jsonl", "group_weights.csv"):
        assert _measured_out(a / name) == _measured_out(b / name), name
    for name in ("best.pt", "last.pt"):
        x, y = load_checkpoint(a / "checkpoints" / name), load_checkpoint(b / "checkpoints" / name)
        for part in ("model", "objective"):
            assert x[part].keys() == y[part].keys()
            for k in x[part]:
                assert torch.equal(x[part][k], y[part][k]), (name, part, k)


def stop(p: subprocess.Popen, sig: signal.Signals) -> str:
    """Send ``sig`` to the paused run; its exit must be the pre-emption code with one line on stderr."""
    p.send_signal(sig)
    assert p.stderr is not None
    err = p.stderr.read().strip()
    assert p.wait(timeout=300) == EXIT_CODE, err
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def continue_as_told(err: str) -> subprocess.CompletedProcess:
    """Run the command the stop line printed (``groupdistil ...``, here through this interpreter)."""
    command = shlex.split(err.split("continue with: ", 1)[1])
    assert command[0] == "groupdistil"
    return cli(*command[1:])


def test_sigterm_and_sigusr1_stop_resumably_and_the_run_ends_as_if_never_stopped(runs):
    root, student = runs
    out = root / "stopped"
    # 1: SIGTERM while epoch 1 is validated (its last.pt just written): the run stops at that epoch's end.
    err = stop(paused_run(*student, "--out", str(out), at="epoch:0"), signal.SIGTERM)
    assert err.startswith(f"stopped by SIGTERM after epoch 1 (step {STEPS_PER_EPOCH}); resumable checkpoint: "
                          f"{out / 'checkpoints' / 'last.pt'}; continue with: groupdistil distill "), err
    assert err.endswith(f"--out {out} --resume")
    assert load_checkpoint(out / "checkpoints/last.pt")["epoch"] == 0
    # 2: resumed with a checkpoint every step (a tiny --checkpoint-every), then SIGUSR1 within epoch 2.
    err = stop(paused_run(*student, "--out", str(out), "--resume", "--checkpoint-every", "1e-6",
                          at=f"step:{STEPS_PER_EPOCH + 5}"), signal.SIGUSR1)
    assert err.startswith(f"stopped by SIGUSR1 after batch 5 of epoch 2 (step {STEPS_PER_EPOCH + 5})"), err
    ck = load_checkpoint(out / "checkpoints/last.pt")
    assert (ck["epoch"], ck["batches"], ck["step"]) == (0, 5, STEPS_PER_EPOCH + 5)
    assert ck["epoch_metrics"]["loss_count"] == 5 * 64  # the partial epoch's accumulators
    rows = (out / "group_weights.csv").read_text().splitlines()
    assert len(rows) == 1 + STEPS_PER_EPOCH + 5  # the rows the checkpoint covers are on disk
    # 3: the printed command continues from batch 6 of epoch 2; the run ends byte for byte as one that was
    # never stopped (weights, q, metrics.jsonl, group_weights.csv, final.json).
    r = continue_as_told(err)
    assert r.returncode == 0, r.stderr
    same_run(root / "full", out)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_run_with_random_crops_resumed_mid_epoch_draws_the_same_crops(runs, tmp_path, workers):
    # Crops come from the main process's RNG (no workers: restored from last.pt) or from each loader
    # worker's stream (the skipped batches are loaded again and dropped, so the stream is where it was).
    args = ["train", "--dataset", "spurious-digits", "--model", "mlp-small", "--epochs", "2", "--quiet",
            "--augment", "--num-workers", workers]
    full = cli(*args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    err = stop(paused_run(*args, "--out", str(tmp_path / "cut"), at=f"step:{STEPS_PER_EPOCH + 7}"), signal.SIGTERM)
    assert f"after batch 7 of epoch 2 (step {STEPS_PER_EPOCH + 7})" in err
    r = continue_as_told(err)
    assert r.returncode == 0, r.stderr
    same_run(tmp_path / "full", tmp_path / "cut")


def test_a_stopped_force_run_continues_beside_the_run_it_replaces(runs, tmp_path):
    root, student = runs
    out = Path(tmp_path / "run")
    r = cli(*student, "--epochs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    finished = (out / "final.json").read_bytes()
    err = stop(paused_run(*student, "--out", str(out), "--force", at="step:4"), signal.SIGTERM)
    assert err.endswith("--force --resume"), err
    assert (tmp_path / ".run.new" / "checkpoints" / "last.pt").is_file()  # kept: it is what resumes
    assert (out / "final.json").read_bytes() == finished  # the old run is untouched until the swap
    r = continue_as_told(err)
    assert r.returncode == 0, r.stderr
    same_run(root / "full", out)
    assert not (tmp_path / ".run.new").exists()


def test_the_continue_command_is_the_command_with_resume():
    from groupdistil.cli.app import resume_command

    assert resume_command(["train", "--out", "a b"]) == "groupdistil train --out 'a b' --resume"
    assert resume_command(["train", "--resume"]) == "groupdistil train --resume"
    assert resume_command(["run", "c.yaml"]) == "groupdistil run c.yaml --set resume=true"
