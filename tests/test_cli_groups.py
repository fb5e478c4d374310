"""Training without group labels through the command line: --train-groups, --val-groups, JTT, the
pseudo-group files and their report, and one-line errors for bad values."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from groupdistil.cli.app import run_app

FAST = ["--dataset", "spurious-digits", "--model", "mlp-small", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "erm"
    assert run_app(["train", *FAST, "--model", "cnn-small", "--epochs", "2", "--out", str(out)]) == 0
    return out / "checkpoints" / "best.pt"


def _final(out: Path) -> dict:
    return json.loads((out / "final.json").read_text())


def test_teacher_clusters_write_groups_agreement_and_reuse_the_cache(teacher, tmp_path, capsys):
    args = ["distill", *FAST, "--method", "groupdistil", "--teacher", str(teacher), "--train-groups",
            "teacher-clusters", "--clusters", "3", "--teacher-cache-dir", str(tmp_path / "cache"), "--no-quiet"]
    assert run_app([*args, "--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert "training groups: teacher-clusters" in first and "cache miss" in first
    # The teacher's logits were cached by the group inference: distillation reads them.
    assert "teacher logits for" in first and first.count("cache hit") == 1
    assert run_app([*args, "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.count("cache hit") == 2
    rows = list(csv.reader((tmp_path / "a/pseudo_groups.csv").read_text().splitlines()))
    assert rows[0] == ["sample", "class", "pseudo_group"]
    info = _final(tmp_path / "a")["train_groups"]
    assert info["source"] == "teacher-clusters" and len(info["group_names"]) == 6
    assert len(rows) - 1 == sum(info["counts"]) == sum(map(sum, info["contingency"]))
    assert all(r[2].startswith(r[1] + "_c") for r in rows[1:])  # clusters within classes
    assert -1 <= info["ari"] <= 1 and len(info["true_group_names"]) == 4
    header = (tmp_path / "a/group_weights.csv").read_text().splitlines()[0]
    assert header.endswith("digit5-9_c0,digit5-9_c1,digit5-9_c2")  # q is over the inferred groups
    assert (tmp_path / "a/pseudo_groups.csv").read_text() == (tmp_path / "b/pseudo_groups.csv").read_text()
    assert run_app(["report", str(tmp_path / "a"), "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep/report.md").read_text()
    assert "Inferred training groups" in report and "| digit0-4_c0 |" in report


def test_jtt_upweights_the_reference_models_errors(teacher, tmp_path):
    out = tmp_path / "jtt"
    assert run_app(["train", *FAST, "--method", "jtt", "--upweight", "10", "--train-groups", "teacher-errors",
                    "--group-reference", str(teacher), "--out", str(out)]) == 0
    final = _final(out)
    assert final["method"] == "jtt" and final["options"] == {"upweight": 10.0}
    assert final["train_groups"]["group_names"][:2] == ["digit0-4_right", "digit0-4_wrong"]
    assert final["teacher"] is None


def test_val_groups_none_selects_on_worst_class(teacher, tmp_path):
    out = tmp_path / "blind"
    assert run_app(["distill", *FAST, "--method", "kd", "--teacher", str(teacher), "--train-groups", "none",
                    "--val-groups", "none", "--out", str(out)]) == 0
    final = _final(out)
    assert final["selection_metric"] == "worst_class_acc" and final["val_groups"] == "none"
    assert final["train_groups"]["group_names"] == ["all"]
    assert run_app(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert "Validation groups not used (--val-groups none)" in (tmp_path / "rep/report.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["--train-groups", "bogus"], "data.train_groups (--train-groups): Input should be 'labels'"),
    (["--clusters", "0"], "data.clusters (--clusters): Input should be greater than or equal to 1"),
    (["--val-groups", "maybe"], "data.val_groups (--val-groups): Input should be 'labels' or 'none'"),
    (["--method", "jtt", "--upweight", "0.5"], "objective.upweight (--upweight): Input should be greater"),
    (["--train-groups", "teacher-errors"], "--train-groups teacher-errors: needs a teacher (--teacher) or "
                                           "--group-reference CKPT"),
    (["--method", "jtt"], "--method jtt: needs --train-groups teacher-errors"),
    (["--method", "group-dro", "--train-groups", "none"], "--train-groups none: method group-dro needs "
                                                          "training groups"),
])
def test_bad_group_options_are_one_line_errors(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_app(["train", *FAST, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing half-written


def test_two_teachers_need_a_group_reference(teacher, tmp_path, capsys):
    assert run_app(["distill", *FAST, "--method", "kd", "--teacher", f"{teacher},{teacher}", "--train-groups",
                    "teacher-clusters", "--out", str(tmp_path / "r")]) == 2
    assert "with 2 teachers, name the model that defines the groups with --group-reference" in capsys.readouterr().err


def test_yaml_group_keys_are_checked(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "spurious-digits", "train_groups": "clusters"}}))
    assert run_app(["run", str(cfg)]) == 2
    assert f"{cfg}: data.train_groups (--train-groups)" in capsys.readouterr().err


def test_the_epoch_line_shows_the_selection_metric_and_no_unused_groups(tmp_path, capsys):
    from groupdistil.training.engine import _epoch_line

    va = {"avg_acc": 0.9, "worst_group_acc": 0.25, "worst_class_acc": 0.75, "balanced_acc": 0.8}
    line = _epoch_line(0, 2, {"loss": 1.0, "avg_acc": 0.5}, va, "worst_class_acc", True)
    assert line.endswith("val avg  90.0  worst-class  75.0  *best") and "worst-group" not in line
    assert _epoch_line(0, 2, {"avg_acc": 0.5}, va, "worst_group_acc", False).endswith("worst-group  25.0")
    assert _epoch_line(0, 2, {"avg_acc": 0.5}, va, "avg_acc", False).endswith("val avg  90.0")
    args = ["train", *FAST, "--no-quiet", "--val-groups", "none", "--out", str(tmp_path / "blind")]
    assert run_app(args) == 0
    shown = capsys.readouterr()
    assert "worst-class" in shown.out and "worst-group" not in shown.out + shown.err
