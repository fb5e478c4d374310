"""The benchmark runner works and records ratios (no timing thresholds here: they live in benchmarks/)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_objective_benchmark_writes_ratios(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "objectives",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "perf.json").read_text())
    rows = data["results"]["objectives"]
    assert [row["case"] for row in rows] == ["C=10, G=4", "C=100, G=100", "C=1000, G=1000"]
    for row in rows:
        for key in ("groupdistil_over_kd", "class_robust_kd_over_kd", "dense_groupdistil_over_kd"):
            assert row[key] > 0
    assert data["machine"]["cores"] >= 1
    assert "| case |" in (tmp_path / "perf.md").read_text()


def test_gpu_benchmark_script_runs_its_cpu_check(tmp_path):
    # The GPU throughput script is meant for a CUDA machine; --quick runs it small on the CPU so that
    # it is known to work before device time is spent on it.
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "gpu",
                        "--threads", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "perf.json").read_text())
    assert data["machine"]["threads"] == 1 and "--threads 1" in data["command"]
    row = data["results"]["gpu"][0]
    for key in ("no_teacher_img_s", "kd_cached_img_s", "groupdistil_cached_img_s", "kd_online_img_s",
                "groupdistil_online_img_s", "online_over_cached", "groupdistil_over_kd"):
        assert row[key] > 0, key
