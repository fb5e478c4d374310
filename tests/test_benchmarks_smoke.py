"""The benchmark runner works and records ratios (no timing thresholds here: they live in benchmarks/)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    assert "| case |" in (tmp_path / "perf.md").read_text()


def test_gpu_check_script_runs_on_the_cpu(tmp_path):
    # benchmarks/gpu_check.sh is meant for a CUDA machine, where device time is scarce; its CPU mode
    # runs the same steps small, so that it is known to work before that time is spent on it.
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                       timeout=600, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                                         "GPU_CHECK_DEVICE": "cpu", "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    table = (tmp_path / "cuda-runs.md").read_text()
    assert "device cpu" in table
    assert [line.split("|")[1].strip() for line in table.splitlines()[4:]] == ["none-online", "fp16-online"]
    data = json.loads((tmp_path / "perf.json").read_text())
    assert "--only gpu --quick" in data["command"]
    row = data["results"]["gpu"][0]
    for key in ("no_teacher_img_s", "kd_cached_img_s", "groupdistil_cached_img_s", "kd_online_img_s",
                "groupdistil_online_img_s", "online_over_cached", "groupdistil_over_kd"):
        assert row[key] > 0, key


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
    sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
    try:
        import study
    finally:
        sys.path.pop(0)
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
    sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
    try:
        import kd_terms
    finally:
        sys.path.pop(0)
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
