"""train / distill / evaluate / run / demo through the command line."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.utils.deterministic
import yaml

from groupdistil.checkpoint import load_checkpoint
from groupdistil.cli.app import run_app
from groupdistil.training.devices import cpu_has_native

FAST = ["--dataset", "spurious-digits", "--model", "mlp-small", "--epochs", "2", "--quiet"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real entry point, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    return subprocess.run([sys.executable, "-m", "groupdistil", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "erm"
    r = cli("train", *FAST, "--model", "cnn-small", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_train_writes_every_output(teacher):
    for name in ("config.yaml", "metrics.jsonl", "group_weights.csv", "final.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (teacher / name).is_file(), name
    assert any((teacher / "tb").iterdir())
    final = json.loads((teacher / "final.json").read_text())
    assert final["method"] == "erm" and final["role"] == "teacher"
    # The start-up phases: non-negative, and together within the run's wall time.
    t = final["time"]
    phases = [t[k] for k in ("data_index_s", "model_build_s", "teacher_s", "fit_s")]
    assert all(v >= 0 for v in phases) and 0 < t["first_batch_s"] <= t["fit_s"]
    assert sum(phases) <= t["wall_s"] + 1e-3 and t["teacher_s"] == 0 and t["teacher_images_per_s"] is None
    lines = [json.loads(x) for x in (teacher / "metrics.jsonl").read_text().splitlines()]
    assert [x["split"] for x in lines] == ["train", "val", "time"] * (len(lines) // 3)
    assert all(0 <= x["data_wait_share"] <= 1 and x["images_per_s"] > 0 for x in lines if x["split"] == "time")
    test = final["splits"]["test"]
    for key in ("avg_acc", "worst_group_acc", "balanced_acc", "adjusted_avg_acc", "worst_class_acc",
                "group_acc", "group_count", "class_acc", "group_ece"):
        assert key in test
    assert sum(test["group_count"].values()) == test["n"]
    assert yaml.safe_load((teacher / "config.yaml").read_text())["train"]["epochs"] == 2


def test_distill_groupdistil_uses_then_reuses_the_cache(teacher, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["distill", *FAST, "--teacher", str(teacher / "checkpoints/best.pt"), "--method", "groupdistil",
            "--step-size", "0.1", "--teacher-cache-dir", str(cache), "--no-quiet"]
    assert run_app([*args, "--out", str(tmp_path / "a")]) == 0
    said = capsys.readouterr().out
    assert "cache miss" in said
    assert re.search(r"epoch +1/2 .* [0-9.]+ s  [0-9]+ img/s  data wait [0-9]+%", said), said
    assert run_app([*args, "--out", str(tmp_path / "b")]) == 0
    assert "cache hit" in capsys.readouterr().out
    rows = (tmp_path / "a/group_weights.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,digit0-4_bg_orange,digit0-4_bg_blue,digit5-9_bg_orange,digit5-9_bg_blue"
    assert len(rows) > 10
    a = json.loads((tmp_path / "a/final.json").read_text())
    b = json.loads((tmp_path / "b/final.json").read_text())
    assert a["splits"] == b["splits"]  # cached logits give the identical run
    # The teacher's pass: timed with its rate where it ran (a), absent where the cache served it (b).
    assert a["time"]["teacher_images_per_s"] > 0 and 0 < a["time"]["teacher_pass_s"] <= a["time"]["teacher_s"]
    assert b["time"]["teacher_images_per_s"] is None and b["time"]["teacher_pass_s"] is None
    assert a["options"] == {"step_size": 0.1}


def test_augmented_training_runs_the_teacher_online(teacher, tmp_path, capsys):
    args = ["distill", *FAST, "--teacher", str(teacher / "checkpoints/best.pt"), "--augment", "--no-quiet",
            "--out", str(tmp_path / "aug"), "--epochs", "1"]
    assert run_app(args) == 0
    assert "computed online" in capsys.readouterr().out


def test_final_records_the_thread_count_a_bit_exact_rerun_needs(tmp_path):
    """Two CPU runs with different thread counts may differ in the last bits; final.json says which
    count a run used, and --threads sets it; and whether its kernels were deterministic."""
    for threads, deterministic in ((1, False), (2, True)):
        out = tmp_path / f"t{threads}"
        r = cli("train", *FAST, "--threads", str(threads), "--out", str(out),
                *([] if deterministic else ["--no-deterministic"]))
        assert r.returncode == 0, r.stderr
        env = json.loads((out / "final.json").read_text())["environment"]
        assert env == {"torch": torch.__version__, "device": "cpu", "threads": threads,
                       "cpu_capability": torch.backends.cpu.get_cpu_capability(), "deterministic": deterministic}


def test_deterministic_kernels_fix_the_cublas_workspace_unless_the_user_did(monkeypatch):
    from groupdistil.app.runner import seed_everything

    before, fill = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    try:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        torch.utils.deterministic.fill_uninitialized_memory = True
        seed_everything(0)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS is deterministic only with it
        assert not torch.utils.deterministic.fill_uninitialized_memory  # a pass per allocation, for nothing
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        seed_everything(0)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(before, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def test_evaluate_json_matches_final(teacher):
    r = cli("evaluate", "--checkpoint", str(teacher / "checkpoints/best.pt"), "--split", "test", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["splits"]["test"]
    want = json.loads((teacher / "final.json").read_text())["splits"]["test"]
    assert got["group_acc"] == want["group_acc"]


def test_run_config_with_overrides(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "digits-lt"}, "model": {"name": "linear"},
                                   "objective": {"method": "balanced"}, "train": {"epochs": 3},
                                   "out": str(tmp_path / "run"), "quiet": True}))
    assert run_app(["run", str(cfg), "--set", "train.epochs=1", "--set", "name=lt"]) == 0
    final = json.loads((tmp_path / "run/final.json").read_text())
    assert final["name"] == "lt" and final["selected_epoch"] == 0
    assert len(final["splits"]["test"]["class_acc"]) == 10


def test_finished_run_is_not_overwritten_without_force(teacher, capsys):
    before = (teacher / "final.json").read_text()
    assert run_app(["train", *FAST, "--out", str(teacher)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--force" in err
    assert (teacher / "final.json").read_text() == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--method", "nope"], "expected one of erm"),
        (["train", "--model", "nope"], "--model: unknown name 'nope'"),
        (["train", "--dataset", "nope"], "--dataset: unknown name 'nope'"),
        (["train", "--method", "kd"], "use `groupdistil distill`"),
        (["train", "--beta", "0.5"], "--beta: does not apply to method erm"),
        (["train", "--epochs", "0"], "train.epochs"),
        (["train", "--optimizer", "lion"], "optim.optimizer"),
        (["distill", "--method", "kd"], "--teacher"),
        (["evaluate", "--checkpoint", "missing.pt"], "missing.pt: checkpoint file not found"),
        (["run", "missing.yaml"], "missing.yaml: config file not found"),
        (["train", "--no-such-flag"], "No such option"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    assert run_app([*args, "--out", str(tmp_path / "x")] if args[0] in ("train", "distill") else args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "x" / "final.json").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--device", "tpu"], "train.device (--device)"),
        # cuda:99 fails on every machine: no CUDA here, fewer than 100 GPUs there.
        (["--device", "cuda:99"], "--device cuda:99: "),
    ],
)
def test_bad_device_or_precision_writes_nothing(args, message, tmp_path, capsys):
    assert run_app(["train", *FAST, *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_on_cpu_trains_with_float32_group_weights(amp, teacher, tmp_path, capsys):
    # The mixed-precision path (autocast around student and online teacher, objective upcasting,
    # DRO math in float32, fp16's grad scaler) on the CPU: its numbers differ from float32 ones, q
    # stays on the simplex, and an fp16 checkpoint carries the loss scale.
    args = ["distill", *FAST, "--teacher", str(teacher / "checkpoints/best.pt"), "--method", "groupdistil",
            "--step-size", "0.1", "--augment", "--device", "cpu", "--epochs", "1"]
    assert run_app([*args, "--out", str(tmp_path / "fp32")]) == 0
    capsys.readouterr()
    assert run_app([*args, "--amp", amp, "--out", str(tmp_path / amp)]) == 0
    slow = f"warning: --amp {amp} on a CPU without {amp} instructions" in capsys.readouterr().err
    assert slow == (not cpu_has_native(amp))
    rows = (tmp_path / amp / "group_weights.csv").read_text().splitlines()[1:]
    q = torch.tensor([[float(v) for v in row.split(",")[2:]] for row in rows])
    assert len(rows) > 10 and torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(len(rows)), atol=1e-6, rtol=0)
    fp32 = (tmp_path / "fp32/group_weights.csv").read_text()
    assert (tmp_path / amp / "group_weights.csv").read_text() != fp32  # autocast was on
    final = json.loads((tmp_path / amp / "final.json").read_text())
    assert 0 <= final["splits"]["test"]["avg_acc"] <= 1
    last = load_checkpoint(tmp_path / amp / "checkpoints/last.pt")
    assert ("scaler" in last) == (amp == "fp16")
    if amp == "fp16":
        assert last["scaler"]["scale"] > 0
        train = json.loads((tmp_path / amp / "metrics.jsonl").read_text().splitlines()[0])
        # Every batch is either a logged step or an overflow the scaler skipped.
        assert len(rows) + train["overflow_steps"] == -(-final["splits"]["train"]["n"] // 64)


def test_channels_last_on_cpu_trains_like_the_default_layout(teacher, tmp_path):
    # NHWC convolutions for the student and the online teacher (--augment): the same run up to float
    # rounding, and the saved weights are in the channels_last layout.
    args = ["distill", *FAST, "--model", "cnn-small", "--teacher", str(teacher / "checkpoints/best.pt"),
            "--method", "groupdistil", "--step-size", "0.1", "--augment", "--device", "cpu", "--epochs", "1"]
    assert run_app([*args, "--out", str(tmp_path / "nchw")]) == 0
    assert run_app([*args, "--channels-last", "--out", str(tmp_path / "nhwc")]) == 0
    kernels = {
        run: {k: v for k, v in load_checkpoint(tmp_path / run / "checkpoints/last.pt")["model"].items()
              if v.dim() == 4}
        for run in ("nchw", "nhwc")
    }
    assert kernels["nhwc"] and set(kernels["nhwc"]) == set(kernels["nchw"])
    for k, w in kernels["nhwc"].items():
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous(), k
        torch.testing.assert_close(w, kernels["nchw"][k], rtol=1e-4, atol=1e-5)
    q = {run: (tmp_path / run / "group_weights.csv").read_text().splitlines()[-1] for run in ("nchw", "nhwc")}
    torch.testing.assert_close(torch.tensor([float(v) for v in q["nhwc"].split(",")]),
                               torch.tensor([float(v) for v in q["nchw"].split(",")]), rtol=0, atol=1e-5)


def test_teacher_with_other_class_count_is_refused(teacher, tmp_path, capsys):
    args = ["distill", "--dataset", "digits-lt", "--model", "linear", "--epochs", "1", "--quiet",
            "--teacher", str(teacher / "checkpoints/best.pt"), "--out", str(tmp_path / "s")]
    assert run_app(args) == 2
    assert "has 2 classes, the dataset has 10" in capsys.readouterr().err


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    for path, msg in ((bad, "corrupt or truncated"), (foreign, "not a groupdistil checkpoint")):
        assert run_app(["evaluate", "--checkpoint", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and str(path) in err and err.count("\n") == 0


def test_demo_with_a_reduced_budget(tmp_path):
    r = cli("demo", "--out", str(tmp_path / "demo"), "--seeds", "1", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    rows = [line.split()[0] for line in r.stdout.splitlines()]
    for name in ("teacher-erm", "teacher-group-dro", "student-erm", "kd<-erm", "groupdistil<-erm",
                 "kd<-group-dro", "groupdistil<-group-dro"):
        assert name in rows
        assert (tmp_path / "demo" / f"{name}-seed0" / "final.json").is_file()


@pytest.mark.slow
def test_compiled_student_trains_like_the_eager_one(tmp_path):
    base = ["train", "--dataset", "spurious-digits", "--model", "mlp-small", "--epochs", "1", "--quiet"]
    assert run_app([*base, "--out", str(tmp_path / "eager")]) == 0
    assert run_app([*base, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    eager = json.loads((tmp_path / "eager/final.json").read_text())["splits"]["val"]
    compiled = json.loads((tmp_path / "compiled/final.json").read_text())["splits"]["val"]
    assert abs(eager["avg_acc"] - compiled["avg_acc"]) < 0.02


@pytest.mark.parametrize("command", [True, False])
def test_a_single_process_exits_frozen_with_its_atexit_hooks_and_open_files_flushed(tmp_path, command):
    """exit_process freezes the collector before the command's finalisation (its passes over every
    object cost most of a run's exit): atexit hooks still run, with the objects frozen, and an object
    outside a cycle is still freed, so a file left open is flushed. Another caller keeps its collector."""
    left_open = tmp_path / "left-open.txt"
    code = (
        "import atexit, gc, sys\n"
        + ("sys.argv[0] = 'groupdistil'\n" if command else "")  # what the console script's process has
        + "atexit.register(lambda: print('hook ran, frozen:', gc.get_freeze_count() > 0))\n"
        f"f = open({str(left_open)!r}, 'w'); f.write('all of it')\n"
        "from groupdistil.parallel.distributed import exit_process\n"
        "exit_process(3)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 3, r.stderr
    assert r.stdout.strip() == f"hook ran, frozen: {command}"
    assert left_open.read_text() == "all of it"
