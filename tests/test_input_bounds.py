"""Hostile inputs (issue 16, items 4-7): bounds on YAML documents, numbers, images, paths and the files
a run writes. Each bad input is one line and exit code 2, and what is left on disk is checked."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from groupdistil import checkpoint as ckpt
from groupdistil.app.runner import model_from_checkpoint
from groupdistil.app.sweep import expand, parse_grid
from groupdistil.cli.app import run_app
from groupdistil.config import leaf_fields, load_yaml, set_dotted, validate_config
from groupdistil.data import DataConfig, load_dataset, transforms
from groupdistil.data.transforms import decode_image
from groupdistil.errors import CheckpointError, ConfigError, DataError, UserError
from groupdistil.loaders import train_loader
from groupdistil.models import create_model
from groupdistil.report import load_group_weights
from groupdistil.runs.outputs import RunWriter

SRC = str(Path(__file__).resolve().parents[1] / "src")


def one_line_error(argv: list[str], capsys) -> str:
    """Run the CLI in this process; it must exit 2 with one error line and no traceback."""
    assert run_app(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def files_under(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*"))


# --- item 4: configuration and flags ---------------------------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join([*lines, f"train: *a{levels - 1}", ""])


@pytest.mark.parametrize(("text", "expect"), [
    (alias_bomb(), "more than 100000 values once aliases are expanded"),
    ("train: " + "[" * 50_000 + "]" * 50_000 + "\n", "line 1: nested more than 64 levels deep"),
    ("train: {seed: " + "1" * 5000 + "}\n", "a value YAML cannot read .*4300 digits"),
    ("train:\n  seed: 2020-13-45\n", "a value YAML cannot read \\(month must be in 1..12\\)"),
])
def test_yaml_documents_over_the_bounds_are_one_line(tmp_path, text, expect):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"c.yaml: {expect}"):
        load_yaml(path)


def test_an_oversized_config_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# padding\n" * 500_000)  # 5 MB of comments
    with pytest.raises(ConfigError, match=r"c.yaml: 5000000 bytes; expected a YAML document of at most"):
        load_yaml(path)


def test_set_values_have_the_same_bounds():
    with pytest.raises(ConfigError, match=r"--set train.seed: line 1: nested more than 64"):
        set_dotted({}, "train.seed=" + "[" * 1000 + "]" * 1000)
    with pytest.raises(ConfigError, match=r"--set train: more than 100000 values"):
        set_dotted({}, "train=" + alias_bomb().replace("\n", "\n"))


def test_plain_aliases_still_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {epochs: 3}\ntrain: *b\n")
    assert load_yaml(path)["train"] == {"epochs": 3}


@pytest.mark.parametrize(("flag", "value", "key"), [
    ("--seed", str(10**30), "train.seed"),
    ("--seed", "-1", "train.seed"),
    ("--batch-size", str(10**30), "train.batch_size"),
    ("--epochs", str(10**30), "train.epochs"),
    ("--num-workers", str(10**30), "train.num_workers"),
    ("--data-seed", str(10**30), "data.data_seed"),
    ("--image-size", "100000", "data.image_size"),
    ("--lr", "inf", "optim.lr"),
    ("--weight-decay", "inf", "optim.weight_decay"),
    ("--teacher-tau", "nan", "teacher.adjust_tau"),
    ("--imbalance-ratio", "inf", "data.imbalance_ratio"),
])
def test_out_of_range_flags_are_refused_before_anything_is_written(tmp_path, capsys, flag, value, key):
    err = one_line_error(["train", flag, value, "--out", str(tmp_path / "o")], capsys)
    assert f"{key} ({flag})" in err
    assert files_under(tmp_path) == []


def test_every_float_option_refuses_inf_and_nan():
    floats = [k for k, f in leaf_fields() if "float" in str(f.annotation)]
    assert len(floats) >= 10
    for key in floats:
        for bad in (float("inf"), float("nan"), float("-inf")):
            raw: dict = {}
            set_dotted(raw, f"{key}={bad}")
            with pytest.raises(ConfigError, match=f"{key} .*finite number"):
                validate_config(raw)


def test_sweep_grid_and_placeholders_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"`grid` objective.alpha=\[,1: a value is not valid YAML"):
        parse_grid(["objective.alpha=[,1"])
    with pytest.raises(UserError, match=r"`grid` objective.alpha: line 1: nested more than 64"):
        parse_grid(["objective.alpha=" + "[" * 100 + "]" * 100])
    for placeholder in ("{seed.nope}", "{seed[0]}", "{seed!z}"):
        with pytest.raises(UserError, match="placeholder in"):
            expand({"name": f"x{placeholder}", "out": str(tmp_path)}, 1, {})
    with pytest.raises(UserError, match=r"`seeds`: expected an integer in \[1, 1000\]"):
        expand({"out": str(tmp_path)}, 10**21, {})


def test_sweep_command_with_a_bad_placeholder(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(f'name: "x{{seed.nope}}"\nout: {tmp_path / "s"}\n')
    err = one_line_error(["sweep", str(tmp_path / "c.yaml")], capsys)
    assert "'int' object has no attribute 'nope'" in err
    assert files_under(tmp_path) == [Path("c.yaml")]


@pytest.mark.parametrize(("rows", "expect"), [
    ("0,train,1\n100000000000000000000000,train,2\n", "line 3, column 'label': expected an integer >= 0 and < 100000"),
    ("0,train,1\n1000000000,train,2\n", "line 3, column 'label': expected an integer >= 0 and < 100000"),
    ("0,train,1\n1e9,train,2\n", "line 3, column 'label'"),
    ("0,train,1e308\n1,train,-1e308\n0,train,1e308\n", "column 'x': values too large to standardise"),
    ("0,train,1e200\n1,train,3\n", "column 'x': values too large to standardise"),
])
def test_manifest_numbers_beyond_the_bounds(tmp_path, rows, expect):
    path = tmp_path / "m.csv"
    path.write_text("label,split,x\n" + rows)
    with np.errstate(all="raise"), pytest.raises(DataError, match=f"m.csv: {expect}"):
        load_dataset(DataConfig(dataset="manifest", root=path))


def test_manifest_group_id_beyond_int64(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("label,split,x,group\n0,train,1,1e23\n1,train,2,0\n")
    with pytest.raises(DataError, match=r"m.csv: line 2, column 'group': expected an integer >= 0"):
        load_dataset(DataConfig(dataset="manifest", root=path))


# --- item 5: images and sizes ----------------------------------------------------------------------


def image_manifest(tmp_path: Path, images: dict[str, np.ndarray]) -> Path:
    rows = ["label,split,path"]
    for k, (name, arr) in enumerate(images.items()):
        Image.fromarray(arr).save(tmp_path / name)
        rows += [f"{k % 2},{split},{name}" for split in ("train", "val", "test")]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def sixteen_bit() -> np.ndarray:
    return (np.arange(64, dtype=np.uint16) * 1031).reshape(8, 8)  # 64 values spread over 0..65000


def test_16bit_greyscale_png_keeps_every_value(tmp_path):
    values = sixteen_bit()
    Image.fromarray(values).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    for mode, channels in (("L", 1), ("RGB", 3)):
        x = decode_image(tmp_path / "g.png", mode)
        assert x.shape == (channels, 8, 8) and x.dtype == torch.float32
        assert x[0].unique().numel() == 64
        torch.testing.assert_close(x[-1], torch.from_numpy(values.astype(np.float32) / 65535))


def test_16bit_tiff_and_the_manifest_pipeline_keep_distinct_values(tmp_path):
    values = sixteen_bit()
    Image.fromarray(values).save(tmp_path / "g.tif")
    assert decode_image(tmp_path / "g.tif", "L").unique().numel() == 64
    path = image_manifest(tmp_path, {"a.png": values, "b.png": values[::-1].copy()})
    bundle = load_dataset(DataConfig(dataset="manifest", root=path, image_size=8))
    x = bundle.train[0][0]
    assert x.shape == (3, 8, 8) and x[0].unique().numel() == 64


def test_8bit_images_decode_as_before(tmp_path):
    arr = np.arange(192, dtype=np.uint8).reshape(8, 8, 3)
    Image.fromarray(arr).save(tmp_path / "c.png")
    torch.testing.assert_close(decode_image(tmp_path / "c.png"), torch.from_numpy(arr).permute(2, 0, 1) / 255.0)


def test_aspect_ratio_bomb_names_the_file(tmp_path, capsys):
    path = image_manifest(tmp_path, {"ok.png": np.zeros((8, 8, 3), np.uint8),
                                     "wide.png": np.zeros((1, 6000, 3), np.uint8)})
    bundle = load_dataset(DataConfig(dataset="manifest", root=path))  # the default 224 px
    with pytest.raises(DataError, match=r"wide.png: image of 1 x 6000 pixels would resize to 224 x 1344000"):
        bundle.train[1]
    err = one_line_error(["train", "--dataset", "manifest", "--root", str(path), "--model", "mlp-small",
                          "--epochs", "1", "--quiet", "--out", str(tmp_path / "o")], capsys)
    assert "wide.png: image of 1 x 6000 pixels" in err
    assert not (tmp_path / "o" / "final.json").exists()


def test_decoded_pixel_count_is_bounded(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(transforms, "MAX_PIXELS", 599)
    with pytest.raises(DataError, match=r"big.png: image of 20 x 30 pixels; expected at most 599 pixels"):
        decode_image(tmp_path / "big.png")


def test_a_worker_error_is_the_main_process_line(tmp_path, capsys):
    path = image_manifest(tmp_path, {"ok.png": np.zeros((8, 8, 3), np.uint8)})
    # A PNG cut in the middle of its pixel data: its header passes the check when the data is loaded,
    # decoding fails in the worker.
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "bad.png").write_bytes((tmp_path / "b.png").read_bytes()[:400])
    path.write_text(path.read_text() + "1,train,bad.png\n")
    train = load_dataset(DataConfig(dataset="manifest", root=path, image_size=8)).train
    messages = []
    for workers in (0, 1):
        with pytest.raises(DataError) as e:
            for _ in train_loader(train, 4, seed=0, epoch=0, num_workers=workers):
                pass
        messages.append(str(e.value))
    assert messages[0] == messages[1] and messages[0].startswith(f"{tmp_path / 'bad.png'}: cannot decode image")
    err = one_line_error(["train", "--dataset", "manifest", "--root", str(path), "--image-size", "8",
                          "--model", "mlp-small", "--epochs", "1", "--quiet", "--num-workers", "1",
                          "--out", str(tmp_path / "o")], capsys)
    assert err == f"error: {messages[0]}"


# --- item 6: paths and files the user gave ---------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "dev-null", "unwritable"])
@pytest.mark.parametrize("command", ["train", "report", "cache"])
def test_output_paths_that_cannot_be_written(tmp_path, capsys, where, command):
    (tmp_path / "f").write_text("mine")
    target = {"file": str(tmp_path / "f"), "dev-null": "/dev/null/run", "unwritable": "/sys/groupdistil/run"}[where]
    argv = {"train": ["train", "--out", target],
            "report": ["report", str(tmp_path), "--out", target],
            "cache": ["distill", "--teacher", str(tmp_path / "t.pt"), "--teacher-cache-dir", target,
                      "--out", str(tmp_path / "o")]}[command]
    err = one_line_error(argv, capsys)
    option = "--teacher-cache-dir" if command == "cache" else "--out"
    expect = {"file": "is an existing file; expected a folder", "dev-null": "/dev/null is not a folder",
              "unwritable": "cannot write in /sys"}[where]
    assert err.startswith(f"error: {option} {target}: {expect}"), err
    assert files_under(tmp_path) == [Path("f")] and (tmp_path / "f").read_text() == "mine"
    assert Path("/dev/null").is_char_device()


NAMES = ["y=0,a=land", "new\nline", 'quo"te', "plain"]


def write_run(folder: Path, epochs: int = 2) -> RunWriter:
    writer = RunWriter(folder, NAMES, tensorboard=False)
    writer.start("x: 1\n", resume_epoch=None)
    for epoch in range(epochs):
        for step in range(3):
            writer.log_weights(10 * epoch + step, epoch, [0.25, 0.25, 0.25, 0.25])
        writer.log_epoch(epoch, "val", {"avg_acc": 0.5})
    return writer


def test_group_names_with_commas_quotes_and_line_breaks_round_trip(tmp_path):
    write_run(tmp_path)
    weights = load_group_weights(tmp_path / "group_weights.csv")
    assert weights.names == tuple(NAMES) and weights.values.shape == (6, 4)
    RunWriter(tmp_path, NAMES, tensorboard=False).start("x: 1\n", resume_epoch=0)  # keeps epoch 0
    weights = load_group_weights(tmp_path / "group_weights.csv")
    assert weights.names == tuple(NAMES) and weights.epoch.tolist() == [0, 0, 0]


def test_non_utf8_tails_are_dropped_on_resume(tmp_path):
    write_run(tmp_path)
    for name in ("metrics.jsonl", "group_weights.csv"):
        with open(tmp_path / name, "ab") as f:
            f.write(b'{"epoch": 0, "x": "\xff\xfe"}\n20,1,\xff\n')
    RunWriter(tmp_path, NAMES, tensorboard=False).start("x: 1\n", resume_epoch=1)
    lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    assert load_group_weights(tmp_path / "group_weights.csv").step.tolist() == [0, 1, 2, 10, 11, 12]


def test_report_names_the_line_of_non_utf8_bytes(tmp_path):
    write_run(tmp_path)
    with open(tmp_path / "group_weights.csv", "ab") as f:
        f.write(b"20,1,\xff\n")
    with pytest.raises(UserError, match=r"group_weights.csv: line 9: expected UTF-8 text, got byte 0xff"):
        load_group_weights(tmp_path / "group_weights.csv")


def final_json(count: object = 3, accuracy: object = 0.5) -> dict:
    test = {"avg_acc": accuracy, "worst_group_acc": 0.5, "balanced_acc": 0.5, "adjusted_avg_acc": 0.5,
            "worst_class_acc": 0.5, "group_acc": {"g0": 0.5}, "class_acc": {"c0": 0.5}, "ece": 0.1,
            "reliability": {"confidence": [0.5], "accuracy": [0.5], "count": [count]}}
    return {"name": "erm", "method": "erm", "role": "teacher", "dataset": "d", "seed": 0, "splits": {"test": test}}


@pytest.mark.parametrize(("final", "expect"), [
    (final_json(count=10**400),
     r"reliability.count\[0\]: expected an integer \(64-bit\), got 'an integer of 401 digits'"),
    (final_json(accuracy=10**400), r"splits.test.avg_acc: expected a number in \[0, 1\] or null"),
])
def test_report_refuses_numbers_beyond_float(tmp_path, capsys, final, expect):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "final.json").write_text(json.dumps(final))
    err = one_line_error(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")], capsys)
    assert "final.json: " in err and __import__("re").search(expect, err), err
    assert not (tmp_path / "rep").exists()


def test_report_reads_a_count_that_fits(tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "final.json").write_text(json.dumps(final_json()))
    assert run_app(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").is_file()


def test_stale_temporary_files_of_our_writes_are_removed_at_start(tmp_path):
    ours = [tmp_path / ".final.json.a1b2c3d4.tmp", tmp_path / "checkpoints" / ".best.pt.zz_9yy8x.tmp",
            tmp_path / ".metrics.jsonl.abcdefgh.tmp"]
    theirs = [tmp_path / ".notes.txt.a1b2c3d4.tmp", tmp_path / "final.json.tmp",
              tmp_path / ".final.json.toolong123.tmp", tmp_path / "checkpoints" / ".best.pt.tmp"]
    (tmp_path / "checkpoints").mkdir()
    for p in ours + theirs:
        p.write_text("x")
    RunWriter(tmp_path, [], tensorboard=False).start("x: 1\n", resume_epoch=None)
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in theirs)
    assert ckpt.remove_stale_tmp(tmp_path, ["final.json"]) == []


def features_manifest(tmp_path: Path, n_features: int = 1) -> Path:
    cols = ",".join(f"x{i}" for i in range(n_features))
    rows = [f"{i % 2},{s}," + ",".join(str(i + j) for j in range(n_features))
            for i, s in enumerate(["train", "train", "val", "test"])]
    (tmp_path / "m.csv").write_text(f"label,split,{cols}\n" + "\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def checkpoint(path: Path, model_name: str, shape: tuple[int, ...], classes: int = 2, state=None) -> Path:
    model = create_model(model_name, classes, in_channels=shape[0], input_shape=shape)
    ckpt.save_checkpoint(path, {"model": state if state is not None else model.state_dict(), "model_name": model_name,
                           "num_classes": classes, "in_channels": shape[0], "input_shape": list(shape)})
    return path


def test_a_checkpoint_for_other_inputs_is_one_line(tmp_path, capsys):
    ck = checkpoint(tmp_path / "c.pt", "mlp-small", (3, 8, 8))
    path = features_manifest(tmp_path, 4)
    err = one_line_error(["evaluate", "--checkpoint", str(ck), "--dataset", "manifest", "--root", str(path)], capsys)
    assert "c.pt: made for inputs of shape (3, 8, 8), the dataset's are (4,)" in err
    err = one_line_error(["distill", "--teacher", str(ck), "--dataset", "manifest", "--root", str(path),
                          "--model", "mlp-small", "--teacher-cache-dir", str(tmp_path / "cache"),
                          "--out", str(tmp_path / "o")], capsys)
    assert "c.pt: made for inputs of shape (3, 8, 8), the dataset's are (4,)" in err
    assert not (tmp_path / "o" / "final.json").exists()
    # The model that defines inferred training groups is checked the same way.
    err = one_line_error(["train", "--dataset", "manifest", "--root", str(path), "--model", "mlp-small",
                          "--method", "group-dro", "--train-groups", "teacher-errors", "--group-reference", str(ck),
                          "--teacher-cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "g")], capsys)
    assert "c.pt: made for inputs of shape (3, 8, 8), the dataset's are (4,)" in err
    assert not (tmp_path / "g" / "final.json").exists()


def test_weight_mismatch_names_the_tensors_and_both_shapes(tmp_path):
    three = create_model("mlp-small", 3, in_channels=4, input_shape=(4,)).state_dict()
    ck = checkpoint(tmp_path / "c.pt", "mlp-small", (4,), classes=2, state=three)
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(ck)
    head = [k for k, v in three.items() if v.shape[0] == 3]
    assert f"{head[0]} is {tuple(three[head[0]].shape)} in the file, " in str(e.value)
    assert "in the model" in str(e.value) and "Error(s) in loading" not in str(e.value)
    torch.save(three, tmp_path / "raw.pt")
    with pytest.raises(CheckpointError, match=f"raw.pt: weights do not fit the model: size mismatch: {head[0]}"):
        create_model("mlp-small", 2, in_channels=4, input_shape=(4,), weights=tmp_path / "raw.pt")


# --- item 7: OpenMP under load ---------------------------------------------------------------------


def _policy(code_prefix: str, env_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = SRC
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    code = code_prefix + "import groupdistil, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    args = ["train"] if code_prefix else []
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    # -X importtime lists each module when its import ends: the policy module ends before torch begins.
    names = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line]
    assert names.index("groupdistil._omp") < names.index("torch._utils_internal")
    return r.stdout.strip()


def test_the_command_line_chooses_the_wait_policy_before_torch_loads():
    as_script = "import sys; sys.argv[0] = '/venv/bin/groupdistil'; "
    # Another process keeps a core busy (of this machine's two or more): the threads must sleep.
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # past its start-up: spinning
        usable = len(os.sched_getaffinity(0))
        assert _policy(as_script, None) == ("PASSIVE" if usable >= 2 else "None")
    finally:
        spinner.kill()
        spinner.wait()
    assert _policy(as_script, "ACTIVE") == "ACTIVE"  # the user's own setting wins
    assert _policy("", None) == "None"  # a library user's process is left alone


def test_the_wait_policy_follows_the_free_cores():
    from groupdistil._omp import busy_cores, wait_policy

    assert wait_policy((1.0, 2), usable=2) == "PASSIVE"  # one of two cores taken
    assert wait_policy((0.04, 2), usable=2) is None  # idle: spinning is fastest
    assert wait_policy((30.0, 64), usable=2) is None  # a big machine with room to spare
    assert wait_policy((30.0, 64), usable=64) == "PASSIVE"
    assert wait_policy(None, usable=2) is None  # counters unreadable: OpenMP's default
    samples = iter([(100, 1000, 2), (150, 1100, 2)])  # half the ticks busy on two cores: one core
    assert busy_cores(lambda: next(samples), seconds=0) == (1.0, 2)
    assert busy_cores(lambda: None, seconds=0) is None


def test_the_usable_cores_follow_omp_num_threads():
    from groupdistil._omp import usable_cores

    cores = len(os.sched_getaffinity(0))
    assert usable_cores({}) == cores
    assert usable_cores({"OMP_NUM_THREADS": "1"}) == 1  # torchrun's default per process
    assert usable_cores({"OMP_NUM_THREADS": "4096"}) == cores
    assert usable_cores({"OMP_NUM_THREADS": "0"}) == 1
    assert usable_cores({"OMP_NUM_THREADS": "4,2"}) == cores  # a nested list: the affinity stands


def test_only_commands_that_run_a_model_sample_the_load():
    from groupdistil._omp import trains

    assert trains(["train", "--dataset", "x"]) and trains(["demo"]) and trains(["evaluate"])
    assert not trains([]) and not trains(["--help"]) and not trains(["report", "runs"])
    assert not trains(["sweep", "c.yaml"])  # each of its runs is a command of its own, which samples


def test_machine_counters_are_read_from_proc_stat(tmp_path):
    from groupdistil._omp import cpu_times

    stat = tmp_path / "stat"
    stat.write_text("cpu  10 2 3 80 5 0 1 4 7 0\ncpu0 5 1 1 40 2 0 1 2 0 0\ncpu1 5 1 2 40 3 0 0 2 0 0\nintr 1\n")
    assert cpu_times(str(stat)) == (20, 105, 2)  # busy = user+nice+system+irq+softirq+steal
    stat.write_text("garbage\n")
    assert cpu_times(str(stat)) is None
    assert cpu_times(str(tmp_path / "absent")) is None


def test_launched_as_cli_recognises_the_entry_points():
    from groupdistil._omp import launched_as_cli

    assert launched_as_cli(["/usr/bin/groupdistil", "train"], ["python", "/usr/bin/groupdistil"])
    assert launched_as_cli(["-m"], ["python3", "-u", "-m", "groupdistil", "run", "c.yaml"])
    assert not launched_as_cli(["script.py"], ["python", "script.py", "groupdistil"])
    assert not launched_as_cli(["-c"], ["python", "-c", "import groupdistil"])


def test_threads_option_sets_torch_threads(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    raw = yaml.safe_load("data: {dataset: manifest}\nmodel: {name: mlp-small}\ntrain: {epochs: 1, threads: 1}\n")
    raw["data"]["root"] = str(features_manifest(tmp_path))
    raw["out"] = str(tmp_path / "o")
    raw["quiet"] = True
    from groupdistil.app.runner import run_experiment

    run_experiment(validate_config(raw))
    assert calls == [1]
    with pytest.raises(ConfigError, match=r"train.threads \(--threads\)"):
        validate_config({"train": {"threads": 0}})


def test_resuming_into_a_model_the_weights_do_not_fit_names_the_tensors(tmp_path):
    from groupdistil.checkpoint import FitState, restore_training, training_payload
    from groupdistil.objectives import build_objective

    def parts(classes: int):
        model = create_model("mlp-small", classes, in_channels=4, input_shape=(4,))
        objective = build_objective("erm", n_groups=2, n_classes=classes)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _e: 1.0)
        return model, objective, opt, sched

    model, objective, opt, sched = parts(3)
    meta = {"model_name": "mlp-small", "num_classes": 3, "in_channels": 4, "input_shape": [4]}
    ckpt.save_checkpoint(tmp_path / "last.pt", training_payload(model, objective, FitState(epoch=0), meta, opt, sched))
    other = parts(2)
    with pytest.raises(CheckpointError) as e:
        restore_training(tmp_path / "last.pt", *other, torch.amp.GradScaler("cpu", enabled=False))
    message = str(e.value)
    assert "does not match this run's model or objective: size mismatch: " in message
    assert "is (3, " in message and "in the file" in message and "Error(s) in loading" not in message
