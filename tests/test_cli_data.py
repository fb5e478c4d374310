"""``groupdistil datasets``, ``groupdistil data inspect`` and the shared dataset flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_csv, write_mnms
from groupdistil.cli.app import run_app
from groupdistil.data import DATASETS, DataConfig

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The real command line, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "groupdistil", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for f in fragments:
        assert f in lines[0]


def test_inspect_json_through_the_real_cli(tmp_path):
    r = cli(["data", "inspect", "--dataset", "spurious-digits", "--data-seed", "1", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert list(out) == ["splits"] and list(out["splits"]) == ["train", "val", "test"]
    train = out["splits"]["train"]
    assert list(train) == ["digit0-4_bg_orange", "digit0-4_bg_blue", "digit5-9_bg_orange", "digit5-9_bg_blue"]
    assert sum(train.values()) == 898 and train["digit0-4_bg_blue"] < 30
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["missing_root", "missing_column", "unknown_split", "corrupt_nifti"])
def test_bad_input_through_the_real_cli(tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    if case == "missing_root":
        args = ["--dataset", "waterbirds", "--root", str(tmp_path / "absent")]
        expect = ["absent", "not found"]
    elif case == "missing_column":
        path = write_csv(tmp_path / "m.csv", ["label", "f"], [[0, 1.0]])
        args, expect = ["--dataset", "manifest", "--root", str(path)], ["m.csv", "missing column 'split'"]
    elif case == "unknown_split":
        path = write_csv(tmp_path / "m.csv", ["label", "split", "f"], [[0, "train", 1.0], [0, "dev", 2.0]])
        args = ["--dataset", "manifest", "--root", str(path)]
        expect = ["m.csv: line 3, column 'split'", "'dev'"]
    else:
        root = write_mnms(tmp_path / "mnms", {"Training": ["P1", "P2"]})
        (root / "Training" / "P2" / "P2_sa.nii.gz").write_bytes(b"junk")
        args, expect = ["--dataset", "mnms", "--root", str(root)], ["P2_sa.nii.gz", "not a readable NIfTI"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert_one_line_error(cli(["data", "inspect", *args], work), *expect)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = run_app(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_datasets_lists_every_name(capsys):
    code, out, _ = run(["datasets"], capsys)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == list(DATASETS)
    readers = {"waterbirds", "celeba", "cifar10-lt", "cifar100-lt", "mnms", "manifest", "imagefolder"}
    builtin = {"spurious-digits", "scanner-digits", "scanner-digits-reversed", "digits-lt"}
    assert readers | builtin == set(DATASETS)


def test_inspect_table_and_warnings(capsys, waterbirds_root):
    code, out, _ = run(["data", "inspect", "--dataset", "waterbirds", "--root", str(waterbirds_root)], capsys)
    assert code == 0
    assert "waterbird_land" in out and "landbird" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["waterbird_land"] == ["1", "0", "1"]
    assert rows["total"] == ["6", "3", "3"]
    assert "warning: waterbirds: train group counts" in out
    code, out, err = run(
        ["data", "inspect", "--dataset", "waterbirds", "--root", str(waterbirds_root), "--json"], capsys
    )
    assert json.loads(out)["splits"]["val"] == {
        "landbird_land": 1, "landbird_water": 1, "waterbird_land": 0, "waterbird_water": 1,
    }  # fmt: skip
    assert "warning:" in err


@pytest.mark.parametrize(
    "case,fragments",
    [
        ("label_range", ["metadata.csv: line 2, column 'y'", "or 1 (waterbird), got '5'"]),
        ("duplicate", ["metadata.csv: line 3, column 'img_id'", "duplicate id '1'"]),
        ("missing_value", ["metadata.csv: line 2, column 'split'", "missing value"]),
        ("bad_flag", ["--imbalance-ratio", "greater than 1"]),
        ("bad_task", ["--task", "pathology"]),
        ("frames", ["line 2, column 'ES'", "expected a frame index in [0, 3)"]),
        ("val_only_label", ["line 3, column 'label'", "never in train"]),
    ],
)  # fmt: skip
def test_bad_input_one_line_exit_2(tmp_path, capsys, case, fragments):
    meta = tmp_path / "metadata.csv"
    args = ["--dataset", "waterbirds", "--root", str(tmp_path)]
    header = ["img_id", "img_filename", "y", "split", "place"]
    if case == "label_range":
        write_csv(meta, header, [[1, "a.jpg", 5, 0, 0]])
    elif case == "duplicate":
        write_csv(meta, header, [[1, "a.jpg", 0, 0, 0], [1, "b.jpg", 0, 0, 0]])
    elif case == "missing_value":
        write_csv(meta, header, [[1, "a.jpg", 0, "", 0]])
    elif case == "bad_flag":
        args = ["--dataset", "cifar10-lt", "--root", str(tmp_path), "--imbalance-ratio", "0.5"]
    elif case == "bad_task":
        args = ["--dataset", "mnms", "--root", str(tmp_path), "--task", "segmentation"]
    elif case == "frames":
        root = write_mnms(tmp_path / "m", {"Training": ["P1"]}, frames=3)
        args = ["--dataset", "mnms", "--root", str(root)]
    else:
        path = write_csv(tmp_path / "m.csv", ["label", "split", "f"], [[0, "train", 1.0], [1, "val", 2.0]])
        args = ["--dataset", "manifest", "--root", str(path)]
    code, out, err = run(["data", "inspect", *args], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    for f in fragments:
        assert f in err


def test_every_command_takes_the_same_dataset_flags():
    from groupdistil.cli.flags import config_parameters

    data_keys = {p.name for p in config_parameters(["data"])}
    assert {k.replace("data__", "") for k in data_keys} == set(DataConfig.model_fields)
    for command in ("train", "distill", "evaluate"):
        code = run_app([command, "--help"])
        assert code == 0
