"""The benchmark runner works and records ratios (no timing thresholds here: they live in benchmarks/)."""

import importlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def experiment(name: str):
    """A module of benchmarks/experiments (the study drivers), imported without leaving it on sys.path."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_quick_objective_benchmark_writes_ratios(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "objectives",
                        "--threads", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "perf.json").read_text())
    rows = data["results"]["objectives"]
    assert [row["case"] for row in rows] == ["C=10, G=4", "C=100, G=100", "C=1000, G=1000"] + [
        f"C={c}, {term}" for c in (100, 1000) for term in ("dkd", "ltkd", "ltkd_shuffled")]
    for row in rows[:3]:
        for key in ("groupdistil_over_kd", "class_robust_kd_over_kd", "dense_groupdistil_over_kd"):
            assert row[key] > 0
    for row in rows[3:]:
        term = row["case"].split(", ")[1]
        assert row[f"{term}_over_kd"] > 0 and row["target"] == {"dkd": 1.3, "ltkd": 1.5, "ltkd_shuffled": 1.5}[term]
    assert data["machine"]["cores"] >= 1
    assert data["machine"]["threads"] == 1 and "--threads 1" in data["command"]
    text = (tmp_path / "perf.md").read_text()
    assert "| case |" in text
    link = re.search(r"\[perf-notes\.md\]\(([^)]+)\)", text)
    assert link is not None and (tmp_path / link.group(1)).resolve() == ROOT / "benchmarks/results/perf-notes.md"
    for written in (ROOT / "benchmarks/results").glob("*/perf.md"):  # the committed ones link to it too
        notes = re.search(r"\[perf-notes\.md\]\(([^)]+)\)", written.read_text())
        assert notes is None or (written.parent / notes.group(1)).is_file(), written


def _gpu_check(out, budgets):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "GPU_CHECK_DEVICE": "cpu", "OUT": str(out),
           "OMP_NUM_THREADS": "1", "GPU_CHECK_BUDGETS": budgets}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=900, env=env)


def test_gpu_check_script_runs_on_the_cpu(tmp_path):
    # benchmarks/gpu_check.sh is meant for a CUDA machine, where device time is scarce; its CPU mode
    # runs the same steps small, so that it is known to work before that time is spent on it.
    r = _gpu_check(tmp_path, "500 300 500")  # budgets no loaded test machine runs out of
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert [line.split("|")[4].strip() for line in (tmp_path / "budget.md").read_text().splitlines()[4:]] == [
        "done"] * 3
    table = (tmp_path / "cuda-runs.md").read_text()
    assert "device cpu" in table
    rows = [line.split("|") for line in table.splitlines()[4:]]
    assert [row[1].strip() for row in rows] == ["teacher", "none-online", "fp16-online"]
    assert all(0 <= float(row[3]) <= 1 for row in rows)  # worst-group accuracy, beside the CPU's
    data = json.loads((tmp_path / "perf.json").read_text())
    assert "--only gpu --quick" in data["command"] and "--repeats 3" in data["command"]
    row = data["results"]["gpu"][0]
    for key in ("no_teacher_img_s", "kd_cached_img_s", "groupdistil_cached_img_s", "kd_online_img_s",
                "groupdistil_online_img_s", "online_over_cached", "groupdistil_over_kd"):
        assert row[key] > 0, key
    steady, fixed, teacher = json.loads((tmp_path / "steady.json").read_text())["results"]
    md = (tmp_path / "steady.md").read_text()  # the same rows as a table, with the command beside them
    assert "python benchmarks/bench_steady.py --device cpu" in md and "| steady state: one more epoch" in md
    # "One more epoch" is a difference of two runs' wall times: its sign is noise on a loaded machine.
    assert math.isfinite(steady["more_epoch_over_bare"]) and steady["bare_epoch_s"] > 0
    assert steady["logged_epoch_s"] > 0
    assert sum(v for k, v in steady.items() if k.endswith("_share")) == pytest.approx(1, abs=0.01)
    assert fixed["fixed_s"] == pytest.approx(fixed["one_epoch_run_s"] - fixed["bare_first_epoch_s"])
    assert teacher["teacher_images_per_s"] > 0


def test_gpu_check_parts_that_run_out_of_their_budget_say_so_and_the_script_goes_on(tmp_path):
    # No timed assertion: a 1-second budget is shorter than any part's start-up, so each part runs
    # out; the script reports it per part and still finishes (exit 0).
    r = _gpu_check(tmp_path, "1 1 1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for i in (1, 2, 3):
        assert f"== part {i} ran out of its budget of 1 s; going on" in r.stdout
    results = [line.split("|")[4].strip() for line in (tmp_path / "budget.md").read_text().splitlines()[4:]]
    assert results == ["ran out of its budget"] * 3


def test_ddp_batchnorm_benchmark_writes_ratios(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "ddp",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "perf.json").read_text())["results"]["ddp"]
    assert [row["case"].split()[0] for row in rows] == ["cnn-small", "resnet20"]
    for row in rows:
        for key in ("global_over_plain", "compute_over_plain", "allreduce_us"):
            assert row[key] > 0, key


def test_study_without_group_labels_plans_valid_runs(tmp_path):
    study = experiment("study")
    from groupdistil.app.sweep import expand

    plan = study.nolabels_study("spurious-digits", tmp_path)
    runs = {raw["name"]: expand(raw, 2, {}, raw["name"]) for raw in plan}
    jtt = runs["jtt-up20"][1].config
    assert jtt.data.train_groups == "teacher-errors" and jtt.objective.upweight == 20.0
    assert jtt.data.group_reference == tmp_path / "erm" / "seed1" / "checkpoints" / "best.pt"
    assert runs["groupdistil-clusters3<-erm"][0].config.data.clusters == 3
    # The comparison rows use the same budget and the data's groups.
    assert runs["groupdistil<-erm"][0].config.data.train_groups == "labels"
    assert {r[0].config.train.epochs for r in runs.values()} == {study.BUDGET["train"]["epochs"]}


def test_kd_terms_study_plans_each_term_plain_and_robust(tmp_path):
    kd_terms = experiment("kd_terms")
    from groupdistil.app.sweep import expand

    for dataset, robust in (("spurious-digits", "groupdistil"), ("digits-lt", "class-robust-kd")):
        plan = kd_terms.plan(dataset, tmp_path)
        runs = {raw["name"]: expand(raw, kd_terms.SEEDS, {}, raw["name"]) for raw in plan}
        assert list(runs) == ["teacher-erm", "kd<-erm", "dkd<-erm", "ltkd<-erm", f"{robust}+kd<-erm",
                              f"{robust}+dkd<-erm", f"{robust}+ltkd<-erm"]
        for name, seeds in runs.items():
            cfg = seeds[2].config
            assert len(seeds) == 3 and cfg.train.seed == 2
            if name != "teacher-erm":  # every student from the ERM teacher of its own seed
                assert cfg.teacher.checkpoints == [tmp_path / "teacher-erm" / "seed2" / "checkpoints" / "best.pt"]
        terms = {n: (r[0].config.objective.method, r[0].config.objective.kd_term) for n, r in runs.items()}
        assert terms[f"{robust}+ltkd<-erm"] == (robust, "ltkd") and terms["dkd<-erm"] == ("dkd", None)
        assert runs[f"{robust}+dkd<-erm"][0].config.objective.dkd_warmup == kd_terms.DKD_WARMUP
        # The same temperature for every student of a dataset.
        assert len({r[0].config.objective.temperature for n, r in runs.items() if n != "teacher-erm"}) == 1


def test_real_images_study_plans_valid_runs(tmp_path):
    study = experiment("study")
    from groupdistil.app.sweep import expand

    images = str(tmp_path / "cifar10")
    plan = study.real_lt_study(images, tmp_path / "runs")
    assert len(plan) == 3 + 3 * 6  # three teachers, six students from each
    runs = {raw["name"]: expand(raw, study.REAL_SEEDS, {}, raw["name"]) for raw in plan}
    assert all(len(r) == 3 for r in runs.values())
    student = runs["tradeoff<-balanced-beta=0.25"][2].config
    assert student.objective.method == "class-robust-kd" and student.objective.mode == "tradeoff"
    assert student.objective.beta == 0.25 and student.model.name == study.STUDENT_MODEL
    assert student.teacher.checkpoints == [tmp_path / "runs" / "teacher-balanced" / "seed2" / "checkpoints" / "best.pt"]
    data = student.data
    assert (data.dataset, str(data.root), data.image_size, data.imbalance_ratio) == ("imagefolder", images, 16, 100.0)
    assert {r[0].config.train.epochs for r in runs.values()} == {study.REAL_BUDGET["train"]["epochs"]}
    assert runs["teacher-robust"][0].config.objective.validation_every == 8
    # A cut grid keeps the head of the student list from every teacher.
    cut = [raw["name"] for raw in study.real_lt_study(images, tmp_path / "runs", students=2)]
    assert cut[3:] == ["standard<-erm", "standard<-balanced", "standard<-robust", "robust<-erm", "robust<-balanced",
                       "robust<-robust"]
    # Each ablation run changes one thing in its grid run: the temperature, or the training length.
    ablation = {raw["name"]: expand(raw, 1, {}, "x")[0].config
                for raw in study.real_lt_ablation(images, tmp_path / "runs")}
    assert len(ablation) == 6 + 2 * len(study.REAL_LONG_EPOCHS)
    for name, cfg in ablation.items():
        grid = runs[name.split("-T=")[0].split("-epochs=")[0]][0].config
        changed = "objective" if "-T=" in name else "train"
        assert cfg.model_dump(exclude={changed, "name", "out"}) == grid.model_dump(exclude={changed, "name", "out"})
        assert getattr(cfg, changed) != getattr(grid, changed)
    assert ablation["robust<-balanced-T=1"].objective.temperature == 1.0
    assert ablation["robust<-balanced-T=1"].objective.mode == "robust"
    assert ablation["standard<-erm-epochs=16"].train.epochs == 16

    # Label-free groups and the KD terms: students of the ERM teacher at the grid's data, budget and T.
    students = {raw["name"]: expand(raw, 3, {}, raw["name"])[1].config
                for raw in study.real_lt_students(images, tmp_path / "runs")}
    assert students["groupdistil-errors<-erm"].data.train_groups == "teacher-errors"
    assert students["groupdistil-clusters2<-erm"].data.clusters == 2
    assert students["groupdistil<-erm"].data.train_groups == "labels"
    robust_ltkd = students["class-robust-kd+ltkd<-erm"].objective
    assert (robust_ltkd.mode, robust_ltkd.kd_term) == ("robust", "ltkd")
    assert students["groupdistil+dkd<-erm"].objective.dkd_warmup == study.REAL_DKD_WARMUP
    assert students["dkd<-erm"].objective.method == "dkd"
    for cfg in students.values():
        assert cfg.teacher.checkpoints == [tmp_path / "runs" / "teacher-erm" / "seed1" / "checkpoints" / "best.pt"]
        assert cfg.data.model_dump(exclude={"train_groups", "clusters"}) == student.data.model_dump(
            exclude={"train_groups", "clusters"})
        assert cfg.train.epochs == study.REAL_BUDGET["train"]["epochs"] and cfg.objective.temperature == 2.0

    # At T = 1: grid runs with only the temperature changed, and the adjusted teachers undone.
    at_t1 = {raw["name"]: expand(raw, 1, {}, "x")[0].config for raw in study.real_lt_at_t1(images, tmp_path / "runs")}
    assert at_t1["tradeoff<-erm-beta=0.75-T=1"].objective.beta == 0.75
    for name, cfg in at_t1.items():
        grid = runs[name.removesuffix("-T=1").replace("-undo-adjust", "")][0].config
        assert cfg.objective.temperature == 1.0
        assert cfg.objective.model_dump(exclude={"temperature"}) == grid.objective.model_dump(exclude={"temperature"})
        assert cfg.data == grid.data and cfg.train == grid.train
        assert cfg.teacher.calibrate == ("undo-adjust" if "undo-adjust" in name else "none")

    # Imbalance 10: the same grid on another long-tailed view.
    ten = [expand(raw, 1, {}, "x")[0].config for raw in study.at_imbalance(study.real_lt_study(images, tmp_path), 10.0)]
    assert {cfg.data.imbalance_ratio for cfg in ten} == {10.0} and len(ten) == len(plan)
    # Its ERM part at T = 2 and 1: only the imbalance (and, for -T=1, the temperature) differ from the grid.
    lt10 = {raw["name"]: expand(raw, 1, {}, "x")[0].config for raw in study.real_lt10_study(images, tmp_path / "runs")}
    assert sorted(lt10) == sorted(["teacher-erm", *(f"{m}<-erm{t}" for m in ("standard", "balanced", "robust")
                                                    for t in ("", "-T=1"))])
    for name, cfg in lt10.items():
        grid = runs[name.removesuffix("-T=1")][0].config
        assert cfg.data.imbalance_ratio == 10.0
        assert cfg.data.model_dump(exclude={"imbalance_ratio"}) == grid.data.model_dump(exclude={"imbalance_ratio"})
        assert cfg.train == grid.train and cfg.teacher.model_dump(exclude={"checkpoints"}) == \
            grid.teacher.model_dump(exclude={"checkpoints"})
        temperature = 1.0 if name.endswith("-T=1") else grid.objective.temperature
        assert cfg.objective.model_dump() == grid.objective.model_copy(update={"temperature": temperature}).model_dump()


def test_defaults_study_changes_only_length_and_temperature(tmp_path):
    import inspect

    import groupdistil as gd
    from groupdistil.app.sweep import expand
    from groupdistil.config import TrainConfig

    study = experiment("study")
    plan = study.defaults_study("digits-lt", tmp_path)
    runs = {raw["name"]: expand(raw, 1, {}, raw["name"])[0].config for raw in plan}
    assert len(runs) == 1 + 2 * 3 * 2
    # The study measures the library's default run: the config's length, the objective's T.
    temperature = inspect.signature(gd.ClassRobustKD).parameters["temperature"].default
    default = runs[f"robust<-erm-T={temperature:g}-epochs={study.DEFAULT_EPOCHS}"]
    assert default.train.epochs == TrainConfig().epochs and default.objective.temperature == temperature
    shared = {"data", "model", "optim"}
    for name, cfg in runs.items():
        if name == "teacher-erm":
            continue
        assert cfg.teacher.checkpoints == [tmp_path / "teacher-erm" / "seed0" / "checkpoints" / "best.pt"]
        assert cfg.model_dump(include=shared) == default.model_dump(include=shared)
        assert cfg.objective.model_dump(exclude={"temperature", "mode"}) == default.objective.model_dump(
            exclude={"temperature", "mode"})
    assert runs["standard<-erm-T=1-epochs=20"].train.epochs == 20
