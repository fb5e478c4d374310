"""groupdistil under torchrun: two gloo ranks on CPU follow one process with the same global batch, and
checkpoints move between world sizes (docs/distributed.md).

The end-to-end tests launch ``python -m torch.distributed.run ... -m groupdistil distill`` on
spurious-digits, through the real entry point; they share one quickly trained teacher and a handful of
runs (module-scoped fixtures) to stay under a minute on a small machine.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

import groupdistil
from conftest import free_port, write_image
from groupdistil.data import DataConfig, load_dataset
from groupdistil.loaders import GlobalBatchSampler
from groupdistil.models import create_model
from groupdistil.objectives import class_weights_of

RANKS = 2
BATCH = 32  # per rank; the single process uses RANKS * BATCH
TOL = 1e-5
STUDENT = [
    "distill", "--dataset", "spurious-digits", "--method", "groupdistil", "--model", "mlp-small",
    "--device", "cpu", "--schedule", "constant", "--lr", "0.1", "--step-size", "1.0",
]

needs_torchrun = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")


# ---- the sampler: rank batches are slices of the single-process batches (no processes needed) ----


@pytest.mark.parametrize("n,world,batch", [(20, 2, 5), (23, 2, 4), (23, 3, 3), (25, 3, 4), (7, 1, 3)])
@pytest.mark.parametrize("weighted", [False, True])
def test_rank_batches_concatenate_to_the_single_process_batches(n, world, batch, weighted):
    weights = torch.linspace(1, 2, n, dtype=torch.float64) if weighted else None
    single = list(GlobalBatchSampler(n, world * batch, seed=3, epoch=2, weights=weights, rank=0, world=1))
    ranks = [list(GlobalBatchSampler(n, batch, seed=3, epoch=2, weights=weights, rank=r, world=world))
             for r in range(world)]
    steps = len(GlobalBatchSampler(n, batch, seed=3, epoch=2, rank=0, world=world))
    assert all(len(r) == steps for r in ranks)  # every rank takes the same number of DDP steps
    assert all(len(b) >= 1 for r in ranks for b in r)
    rest = n % (world * batch)
    dropped = 0 < rest < world  # a last global batch smaller than the world is dropped everywhere
    assert steps == len(single) - dropped
    for k in range(steps):
        assert [i for r in ranks for i in r[k]] == single[k]
    if not weighted:
        seen = sorted(i for r in ranks for b in r for i in b)
        assert seen == sorted(set(seen)) and len(seen) == n - (rest if dropped else 0)


def test_the_order_depends_on_the_epoch_only():
    a = GlobalBatchSampler(50, 8, seed=1, epoch=4, rank=0, world=1)
    assert list(a) == list(GlobalBatchSampler(50, 8, seed=1, epoch=4, rank=0, world=1))
    assert list(a) != list(GlobalBatchSampler(50, 8, seed=1, epoch=5, rank=0, world=1))


# ---- end to end under torchrun -----------------------------------------------------------------------


def _launch(
    env: dict[str, str], args: list[str], ranks: int = 1, torchrun: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """``python -m groupdistil ARGS`` in one process, or under torchrun on ``ranks`` CPU processes."""
    cmd = [sys.executable, "-m", "groupdistil", *args]
    if ranks > 1:
        # --standalone: a rendezvous on a free local port, so parallel test runs never collide.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               *torchrun, "-m", "groupdistil", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def _ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("dist")
    e = dict(os.environ)
    # The launched interpreters import this checkout's groupdistil, wherever the venv points.
    src = str(Path(groupdistil.__file__).resolve().parents[1])
    e["PYTHONPATH"] = os.pathsep.join([src, e["PYTHONPATH"]]) if e.get("PYTHONPATH") else src
    e["GROUPDISTIL_CACHE"] = str(root / "cache")
    e["OMP_NUM_THREADS"] = "1"  # two ranks on a small machine: no thread oversubscription
    e["ROOT"] = str(root)
    return e


@pytest.fixture(scope="module")
def teacher(env) -> Path:
    out = Path(env["ROOT"]) / "teacher"
    _ok(_launch(env, ["train", "--dataset", "spurious-digits", "--model", "mlp-small", "--device", "cpu",
                      "--epochs", "1", "--quiet", "--out", str(out)]))
    return out / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def runs(env, teacher) -> dict[str, Path | str]:
    """One epoch on 2 ranks (batch 32 each) and on 1 (batch 64); two uninterrupted epochs on 1."""
    root = Path(env["ROOT"])
    args = [*STUDENT, "--teacher", str(teacher)]
    # First, so that its rank 0 builds the teacher-logit cache that rank 1 then reads. Not quiet: the
    # test checks that only rank 0 speaks.
    two = _ok(_launch(env, [*args, "--epochs", "1", "--batch-size", str(BATCH), "--out", str(root / "two")],
                      ranks=RANKS))
    _ok(_launch(env, [*args, "--epochs", "1", "--batch-size", str(RANKS * BATCH), "--out", str(root / "one"),
                      "--quiet"]))
    _ok(_launch(env, [*args, "--epochs", "2", "--batch-size", str(RANKS * BATCH), "--out", str(root / "ref"),
                      "--quiet"]))
    return {"two": root / "two", "one": root / "one", "ref": root / "ref", "two_stdout": two.stdout}


def _weights(run: Path) -> torch.Tensor:
    with open(run / "group_weights.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    return torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)


def _last(run: Path) -> dict[str, torch.Tensor]:
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    q = class_weights_of(ck["objective"])  # group DRO's q or the class objectives' lambda
    return {**ck["model"], **({"q": q} if q is not None else {})}


def _assert_same_training(got: Path, want: Path) -> None:
    w_got, w_want = _weights(got), _weights(want)
    assert w_got.shape == w_want.shape  # same steps (and the step and epoch columns match exactly)
    assert torch.equal(w_got[:, :2], w_want[:, :2])
    torch.testing.assert_close(w_got[:, 2:], w_want[:, 2:], rtol=0, atol=TOL)  # q at every step
    a, b = _last(got), _last(want)
    assert set(a) == set(b) and not any(k.startswith("module.") for k in a)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=TOL, msg=k)


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_groupdistil_epoch_on_two_ranks_equals_one_process(env, runs):
    _assert_same_training(runs["two"], runs["one"])
    q = _weights(runs["two"])[-1, 2:]
    assert (q - 0.25).abs().max() > 0.1  # q moved: comparing it tests something
    # final.json: the strided evaluation saw every sample exactly once, and all-reduced metrics agree.
    bundle = load_dataset(DataConfig(dataset="spurious-digits"))
    two, one = (json.loads((runs[k] / "final.json").read_text()) for k in ("two", "one"))
    assert two["selected_epoch"] == one["selected_epoch"] == 0
    for split in ("train", "val", "test"):
        s2, s1 = two["splits"][split], one["splits"][split]
        assert s2["n"] == s1["n"] == len(bundle.splits[split])
        assert s2["group_count"] == s1["group_count"]
        for key in ("avg_acc", "worst_group_acc", "balanced_acc", "worst_class_acc", "ece", "loss"):
            if s1[key] is None:
                assert s2[key] is None
            else:
                assert s2[key] == pytest.approx(s1[key], abs=1e-6), (split, key)
    # Only rank 0 speaks and writes; the teacher-logit cache was built once, by rank 0.
    out = runs["two_stdout"]
    assert out.count(f"wrote {runs['two']}") == 1
    assert out.count("cache miss") == 1 and "cache hit" not in out
    assert len(list(Path(env["GROUPDISTIL_CACHE"]).glob("*.npy"))) == 1


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_train_and_run_commands_under_torchrun(env, runs, teacher, tmp_path):
    # `train` on 2 ranks of 32 is the teacher fixture's one-process `train` (default batch 64) ...
    _ok(_launch(env, ["train", "--dataset", "spurious-digits", "--model", "mlp-small", "--device", "cpu",
                      "--epochs", "1", "--batch-size", str(BATCH), "--quiet", "--out", str(tmp_path / "train")],
                ranks=RANKS))
    a, b = _last(tmp_path / "train"), _last(teacher.parent.parent)
    assert set(a) == set(b)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=TOL, msg=k)
    # ... and `run` with a YAML file is the same experiment as the flags of the 2-rank distill run.
    config = tmp_path / "student.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp_path / "run"), "data": {"dataset": "spurious-digits"}, "model": {"name": "mlp-small"},
        "teacher": {"checkpoints": [str(teacher)]},
        "objective": {"method": "groupdistil", "step_size": 1.0},
        "optim": {"lr": 0.1, "schedule": "constant"},
        "train": {"epochs": 1, "batch_size": BATCH, "device": "cpu"}, "quiet": True,
    }))
    _ok(_launch(env, ["run", str(config)], ranks=RANKS))
    _assert_same_training(tmp_path / "run", runs["two"])


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_ranks_leave_without_the_interpreters_finalisation(env, tmp_path):
    # gloo's worker threads outlive destroy_process_group (DDP keeps the group alive inside torch) and
    # one that releases a finished collective's tensors while the interpreter finalises aborts the
    # process (SIGABRT after a complete run). So a rank skips finalisation: an atexit hook installed
    # in every interpreter (sitecustomize) never runs there, while a one-process run still runs it.
    marks = tmp_path / "marks"
    marks.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import atexit, os, sys\n"
        "a = sys.orig_argv\n"
        "if '-m' in a and a[a.index('-m') + 1] == 'groupdistil':  # a rank or the one process, not torchrun\n"
        f"    atexit.register(lambda: open(os.path.join({str(marks)!r}, str(os.getpid())), 'w').close())\n"
    )
    e = {**env, "PYTHONPATH": os.pathsep.join([str(site), env["PYTHONPATH"]])}
    args = ["train", "--dataset", "spurious-digits", "--model", "mlp-small", "--device", "cpu", "--epochs", "1",
            "--batch-size", str(BATCH)]
    r = _ok(_launch(e, [*args, "--out", str(tmp_path / "two")], ranks=RANKS))
    assert "wrote " in r.stdout and (tmp_path / "two" / "final.json").is_file()  # output flushed before leaving
    assert list(marks.iterdir()) == []
    _ok(_launch(e, [*args, "--quiet", "--out", str(tmp_path / "one")]))
    assert len(list(marks.iterdir())) == 1  # the hook works: a single process finalises as usual


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_a_batchnorm_model_on_two_ranks_equals_one_process(env, teacher, tmp_path):
    # cnn-small has BatchNorm: on the ranks it becomes GlobalBatchNorm, which normalises with the
    # global batch's statistics, so the run (running statistics included) is the one-process run.
    args = [*STUDENT, "--model", "cnn-small", "--teacher", str(teacher), "--epochs", "1", "--quiet"]
    _ok(_launch(env, [*args, "--batch-size", str(BATCH), "--out", str(tmp_path / "two")], ranks=RANKS))
    _ok(_launch(env, [*args, "--batch-size", str(RANKS * BATCH), "--out", str(tmp_path / "one")]))
    _assert_same_training(tmp_path / "two", tmp_path / "one")
    assert any("running_var" in k for k in _last(tmp_path / "one"))
    # --no-sync-batchnorm trades that for speed: each rank normalises with its own part's statistics.
    _ok(_launch(env, [*args, "--batch-size", str(BATCH), "--no-sync-batchnorm", "--out", str(tmp_path / "own")],
                ranks=RANKS))
    with pytest.raises(AssertionError):
        _assert_same_training(tmp_path / "own", tmp_path / "one")



@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_two_nodes_with_a_c10d_rendezvous_equal_one_process(env, runs, teacher, tmp_path):
    # Two "nodes" on this machine, one process each: both have LOCAL_RANK 0, only one has RANK 0. The
    # run must still be written and narrated by global rank 0 alone, its teacher-logit cache built
    # once, and its training be that of one process with the same global batch.
    port = free_port()
    node_env = {**env, "GROUPDISTIL_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "nodes"
    args = [*STUDENT, "--teacher", str(teacher), "--epochs", "1", "--batch-size", str(BATCH), "--out", str(out)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "nodes",
             "--rdzv-conf", f"is_host={int(host)}", "-m", "groupdistil", *args],
            env=node_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for host in (True, False)
    ]
    try:
        outputs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, f"exit {p.returncode}\n{stdout[-2000:]}\n{stderr[-4000:]}"
    _assert_same_training(out, runs["one"])
    # Whichever node the rendezvous made rank 0 speaks; the other node says nothing.
    spoke = [stdout for stdout, _ in outputs if f"wrote {out}" in stdout]
    silent = [stdout for stdout, _ in outputs if f"wrote {out}" not in stdout]
    assert len(spoke) == 1 and spoke[0].count(f"wrote {out}") == 1
    assert spoke[0].count("cache miss") == 1 and "cache hit" not in spoke[0]
    assert silent[0].strip() == ""
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def _interrupted_copy(run: Path, dest: Path) -> Path:
    """The run as a kill after its last epoch would leave it: everything but final.json."""
    shutil.copytree(run, dest)
    (dest / "final.json").unlink()
    return dest


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_two_rank_checkpoint_resumes_on_one_process(env, runs, teacher, tmp_path):
    out = _interrupted_copy(runs["two"], tmp_path / "resumed")
    _ok(_launch(env, [*STUDENT, "--teacher", str(teacher), "--epochs", "2", "--batch-size", str(RANKS * BATCH),
                      "--out", str(out), "--resume", "--quiet"]))
    _assert_same_training(out, runs["ref"])


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_one_process_checkpoint_resumes_on_two_ranks(env, runs, teacher, tmp_path):
    out = _interrupted_copy(runs["one"], tmp_path / "resumed")
    _ok(_launch(env, [*STUDENT, "--teacher", str(teacher), "--epochs", "2", "--batch-size", str(BATCH),
                      "--out", str(out), "--resume", "--quiet"], ranks=RANKS))
    _assert_same_training(out, runs["ref"])


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
@pytest.mark.parametrize("kill_at,epochs,want", [("epoch:0", 2, "ref"), ("step:3", 1, "two")])
def test_torchrun_restarts_after_a_kill_and_the_run_goes_on(env, runs, teacher, tmp_path, kill_at, epochs, want):
    # Rank 0 is killed (SIGKILL, like a pre-empted node) after epoch 0's checkpoint, or every rank
    # before any checkpoint; torchrun --max-restarts restarts the workers with the same command, which
    # continues from last.pt (or starts again) and ends with the uninterrupted run's q and parameters.
    out = tmp_path / "run"
    r = _ok(_launch({**env, "GROUPDISTIL_KILL_AT": kill_at},
                    [*STUDENT, "--teacher", str(teacher), "--epochs", str(epochs), "--batch-size", str(BATCH),
                     "--out", str(out), "--force"], ranks=RANKS, torchrun=("--max-restarts", "1")))
    assert ("resumed from" in r.stdout) == (kill_at == "epoch:0")
    assert "failed (exitcode: -9)" in r.stderr  # the first attempt was killed; torchrun restarted it
    _assert_same_training(out, runs[want])
    assert json.loads((out / "final.json").read_text())["selected_epoch"] in range(epochs)


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_sigterm_to_torchrun_stops_every_rank_after_the_same_step_and_the_run_resumes(env, runs, teacher, tmp_path):
    # Both ranks wait at step 20 (batch 5 of epoch 2); torchrun gets SIGTERM, as SLURM sends it, and
    # forwards it to its workers. They agree to stop after that step, rank 0 writes last.pt, and the
    # resumed run ends with the uninterrupted run's q and parameters.
    out = tmp_path / "run"
    args = [*STUDENT, "--teacher", str(teacher), "--epochs", "2", "--batch-size", str(BATCH), "--quiet",
            "--out", str(out)]
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(RANKS),
         "-m", "groupdistil", *args], env={**env, "GROUPDISTIL_PAUSE_AT": "step:20"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert agent.stderr is not None
    seen = []
    for line in agent.stderr:
        seen.append(line)
        if "".join(seen).count("paused at step:20") == RANKS:  # counted in the text, not per line
            break
    agent.send_signal(signal.SIGTERM)
    rest = agent.communicate(timeout=120)[1]
    err = "".join(seen) + rest
    assert err.count("stopped by SIGTERM after batch 5 of epoch 2 (step 20)") == 1, err[-3000:]  # rank 0 speaks
    assert "continue with: torchrun <its options> -m groupdistil distill" in err
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", err)
    assert "-9" not in codes, err[-3000:]  # no rank outlived torchrun's grace time
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["batches"], ck["step"]) == (0, 5, 20)
    _ok(_launch(env, [*args, "--resume"], ranks=RANKS))
    _assert_same_training(out, runs["ref"])


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_an_error_on_rank_0_stops_every_rank_with_one_line(env, runs, teacher):
    # A finished run without --force: rank 0 refuses, and the other rank must not wait forever.
    r = _launch(env, [*STUDENT, "--teacher", str(teacher), "--epochs", "1", "--batch-size", str(BATCH),
                      "--out", str(runs["one"]), "--quiet"], ranks=RANKS, torchrun=("--monitor-interval", "1"))
    assert r.returncode != 0
    assert r.stderr.count("error: --out") == 1, r.stderr[-3000:]  # printed by rank 0 only
    assert "holds a finished run" in r.stderr
    assert r.stderr.count("Traceback") <= 1  # torchrun's own report; no rank died with a traceback
    # torchrun's failure summary lists each rank's exit code. Every rank exits with the CLI's code for
    # user errors; a rank still on its way out when another has exited may instead be stopped by
    # torchrun's SIGTERM (-15), which is torchrun's scheduling, not ours. The root cause is always 2.
    codes = dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", r.stderr))
    assert set(codes) == {str(k) for k in range(RANKS)}, r.stderr[-3000:]
    assert set(codes.values()) <= {"2", "-15"} and "2" in codes.values(), r.stderr[-3000:]
    root = re.search(r"Root Cause.*?exitcode\s*:\s*(-?\d+)", r.stderr, re.S)
    assert root is not None and root.group(1) == "2", r.stderr[-3000:]


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_a_nonfinite_loss_on_two_ranks_is_one_line_and_exit_3(env, teacher, tmp_path):
    # Every rank stops at the same step (the loss is global); only rank 0 says so, after the process
    # group is gone (torchrun's RANK decides, not the destroyed group).
    r = _launch({**env, "GROUPDISTIL_NAN_AT": "3"},
                [*STUDENT, "--teacher", str(teacher), "--epochs", "1", "--batch-size", str(BATCH), "--quiet",
                 "--out", str(tmp_path / "nan")], ranks=RANKS)
    assert r.returncode != 0
    assert r.stderr.count("error: non-finite loss at step 3") == 1, r.stderr[-3000:]
    codes = dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", r.stderr))
    assert "3" in codes.values() and set(codes.values()) <= {"3", "-15"}, r.stderr[-3000:]


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_a_frozen_backbone_with_a_head_lr_on_two_ranks_equals_one_process(env, teacher, tmp_path):
    # DDP over a model whose backbone has no gradients (and whose BatchNorm stays in eval mode): the
    # head's gradients are all-reduced as usual, and the run is the one-process run.
    args = [*STUDENT, "--model", "cnn-small", "--teacher", str(teacher), "--epochs", "1", "--quiet",
            "--freeze", "backbone", "--head-lr", "0.5"]
    _ok(_launch(env, [*args, "--batch-size", str(BATCH), "--out", str(tmp_path / "two")], ranks=RANKS))
    _ok(_launch(env, [*args, "--batch-size", str(RANKS * BATCH), "--out", str(tmp_path / "one")]))
    _assert_same_training(tmp_path / "two", tmp_path / "one")
    bundle = load_dataset(DataConfig(dataset="spurious-digits"))
    torch.manual_seed(0)  # the run's initialisation (seed 0)
    init = create_model("cnn-small", bundle.n_classes, in_channels=bundle.input_shape[0],
                        input_shape=bundle.input_shape).state_dict()
    last = _last(tmp_path / "two")
    changed = {k for k in init if not torch.equal(init[k], last[k])}
    assert changed == {"classifier.weight", "classifier.bias"}


def test_inferred_groups_are_the_same_on_every_rank(env, teacher, tmp_path):
    # Rank 0 infers the groups (here without a cache) and every rank trains on its ids: two ranks then
    # follow the one-process run (which infers them through the cache) step for step, q included.
    args = [*STUDENT, "--teacher", str(teacher), "--epochs", "1", "--train-groups", "teacher-clusters", "--quiet"]
    _ok(_launch(env, [*args, "--batch-size", str(BATCH), "--no-teacher-cache", "--out",
                            str(tmp_path / "two")], ranks=RANKS))
    _ok(_launch(env, [*args, "--batch-size", str(RANKS * BATCH), "--teacher-cache-dir", str(tmp_path / "cache"),
                      "--out", str(tmp_path / "one")]))
    _assert_same_training(tmp_path / "two", tmp_path / "one")
    assert (tmp_path / "two" / "pseudo_groups.csv").read_text() == (tmp_path / "one" / "pseudo_groups.csv").read_text()
    two_final, one_final = (json.loads((tmp_path / k / "final.json").read_text()) for k in ("two", "one"))
    assert two_final["train_groups"] == one_final["train_groups"]
    assert len(two_final["train_groups"]["group_names"]) == 4


@pytest.mark.slow  # each launch starts fresh interpreters that import torch
@needs_torchrun
def test_images_read_from_files_on_two_ranks_equal_one_process(env, tmp_path):
    # Each rank decodes its share of the validation split at the first validation and holds it for the
    # second and for the final evaluation (loaders.HeldPasses); the metrics are all-reduced as before.
    root = tmp_path / "d"
    for k, name in enumerate(("a", "b")):
        for split, n in (("train", 24), ("val", 7 + k), ("test", 5)):
            for i in range(n):
                write_image(root / split / name / f"{i:02d}.png", value=60 + 90 * k + 3 * i, size=(9, 7))
    args = ["train", "--dataset", "imagefolder", "--root", str(root), "--image-size", "8", "--model", "linear",
            "--method", "group-dro", "--step-size", "1.0", "--device", "cpu", "--epochs", "2", "--lr", "0.05",
            "--quiet"]
    _ok(_launch(env, [*args, "--batch-size", "8", "--out", str(tmp_path / "two")], ranks=RANKS))
    _ok(_launch(env, [*args, "--batch-size", "16", "--out", str(tmp_path / "one")]))
    _assert_same_training(tmp_path / "two", tmp_path / "one")
    finals = {k: json.loads((tmp_path / k / "final.json").read_text()) for k in ("two", "one")}
    assert finals["two"]["selected_epoch"] == finals["one"]["selected_epoch"]
    for split, n in (("train", 48), ("val", 15), ("test", 10)):
        s2, s1 = finals["two"]["splits"][split], finals["one"]["splits"][split]
        assert s2["n"] == s1["n"] == n and s2["group_count"] == s1["group_count"]
        for key in ("avg_acc", "worst_group_acc", "ece", "loss"):
            assert s2[key] == pytest.approx(s1[key], abs=1e-6), (split, key)
    for k, final in finals.items():  # the selected epoch's validation found what the final evaluation finds
        lines = [json.loads(line) for line in (tmp_path / k / "metrics.jsonl").read_text().splitlines()]
        val = next(r for r in lines if r["split"] == "val" and r["epoch"] == final["selected_epoch"])
        for key in ("n", "avg_acc", "worst_group_acc", "ece", "loss"):
            assert val[key] == pytest.approx(final["splits"]["val"][key], abs=1e-9), (k, key)
