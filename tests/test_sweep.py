"""groupdistil sweep: grid expansion, placeholders, resumable runs, the index."""

import json

import pytest
import yaml

from groupdistil.app.sweep import expand, parse_grid
from groupdistil.cli.app import run_app
from groupdistil.errors import UserError


def _raw(tmp_path, **extra):
    return {"data": {"dataset": "spurious-digits"}, "model": {"name": "linear"},
            "objective": {"method": "group-dro"}, "train": {"epochs": 1}, "out": str(tmp_path / "sw"), **extra}


def test_grid_times_seeds_with_names_outs_and_placeholders(tmp_path):
    raw = _raw(tmp_path, teacher={"checkpoints": ["t/seed{seed}/eta{step_size}.pt"]})
    runs = expand(raw, 2, parse_grid(["objective.step_size=0.01,0.1"]))
    assert [(r.name, r.seed) for r in runs] == [
        ("group-dro-step_size=0.01", 0), ("group-dro-step_size=0.01", 1),
        ("group-dro-step_size=0.1", 0), ("group-dro-step_size=0.1", 1)]
    last = runs[-1].config
    assert last.objective.step_size == 0.1 and last.train.seed == 1
    assert str(last.out) == str(tmp_path / "sw" / "group-dro-step_size=0.1" / "seed1")
    assert [str(p) for p in last.teacher.checkpoints] == ["t/seed1/eta0.1.pt"]


@pytest.mark.parametrize("item,msg", [("train.epoch=1,2", "unknown config key"), ("objective.beta", "key=v1"),
                                      ("train.seed=1,2", "set by the sweep")])
def test_bad_grid_is_refused(item, msg):
    with pytest.raises(UserError, match=msg):
        parse_grid([item])


def test_bad_value_in_the_grid_fails_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match=r"train.epochs \(--epochs\)"):
        expand(_raw(tmp_path), 1, parse_grid(["train.epochs=1,0"]))
    assert not (tmp_path / "sw").exists()


def test_sweep_runs_then_skips_finished_runs(tmp_path, capsys):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(_raw(tmp_path)))
    assert run_app(["sweep", str(cfg), "--seeds", "2", "--grid", "objective.step_size=0.1", "--jobs", "2"]) == 0
    index = json.loads((tmp_path / "sw" / "index.json").read_text())["runs"]
    assert sorted((r["seed"], r["status"]) for r in index) == [(0, "finished"), (1, "finished")]
    assert all(0 <= r["test"]["avg_acc"] <= 1 for r in index)
    final = tmp_path / "sw" / "group-dro-step_size=0.1" / "seed0" / "final.json"
    stamp = final.stat().st_mtime_ns
    capsys.readouterr()
    assert run_app(["sweep", str(cfg), "--seeds", "2", "--grid", "objective.step_size=0.1"]) == 0
    assert "skipped" in capsys.readouterr().out
    index = json.loads((tmp_path / "sw" / "index.json").read_text())["runs"]
    assert [r["status"] for r in index] == ["skipped", "skipped"]
    assert final.stat().st_mtime_ns == stamp


def test_failed_run_is_recorded_and_the_sweep_exits_1(tmp_path, capsys):
    cfg = tmp_path / "sweep.yaml"
    raw = _raw(tmp_path)
    raw["teacher"] = {"checkpoints": ["missing-{seed}.pt"]}
    raw["objective"] = {"method": "kd"}
    cfg.write_text(yaml.safe_dump(raw))
    assert run_app(["sweep", str(cfg)]) == 1
    (entry,) = json.loads((tmp_path / "sw" / "index.json").read_text())["runs"]
    assert entry["status"] == "failed" and "missing-0.pt" in entry["error"]


def test_unknown_grid_key_through_the_cli_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(_raw(tmp_path)))
    assert run_app(["sweep", str(cfg), "--grid", "nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown config key 'nope'" in err and err.count("\n") == 0
