"""Teacher calibration: undo-adjust inverts the training-time adjustment, temperature and vector
scaling lower validation NLL, and the CLI option end to end (record, refusal, cache, report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import groupdistil as gd
from groupdistil.calibration import fit_temperature, fit_vector, nll, undo_adjustment
from groupdistil.checkpoint import load_checkpoint
from groupdistil.cli.app import run_app

PRIOR = torch.tensor([0.6, 0.25, 0.1, 0.05])
LAMBDA = torch.tensor([0.1, 0.2, 0.3, 0.4])


def test_undo_adjust_inverts_the_robust_teachers_adjustment_exactly() -> None:
    obj = gd.RobustTeacher(PRIOR, tau=1.5)
    obj.lam.q.copy_(LAMBDA)
    cal = undo_adjustment(obj.logit_adjustment(), obj.lam.q, Path("t.pt"))
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(20, 4, generator=g, dtype=torch.float64)  # the class-probability logits
    shift = 1.5 * PRIOR.double().log() - LAMBDA.double().log()
    s = z - shift  # what a teacher trained on ce(s + shift, y) outputs
    torch.testing.assert_close(cal(s), z, rtol=0, atol=1e-12)
    # The record says exactly what the objective's loss adds: ce(cal(s)) is the training loss.
    y = torch.randint(0, 4, (20,), generator=g)
    torch.testing.assert_close(gd.cross_entropy(cal(s.float()), y), obj.per_sample(s.float(), y, None)[0])


def test_undo_adjust_of_a_balanced_teacher_and_refusals() -> None:
    obj = gd.LogitAdjusted(PRIOR, tau=2.0)
    cal = undo_adjustment(obj.logit_adjustment(), None, Path("b.pt"))
    torch.testing.assert_close(cal.bias, 2.0 * PRIOR.double().log())
    assert gd.ERM().logit_adjustment() is None
    with pytest.raises(gd.UserError, match=r"^`teacher.calibrate` undo-adjust: e.pt records no logit adjustment"):
        undo_adjustment(None, None, Path("e.pt"))
    robust = gd.RobustTeacher(PRIOR).logit_adjustment()
    with pytest.raises(gd.UserError, match="robust teacher without its lambda"):
        undo_adjustment(robust, None, Path("r.pt"))


def _miscalibrated(seed: int = 0, n: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z); the teacher outputs 4 z plus a per-class offset (over-confident
    and biased towards class 0)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g)
    y = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    return 4 * z + torch.tensor([1.5, 0.0, -0.5, -1.0]), y


def test_temperature_and_vector_scaling_lower_validation_nll_deterministically() -> None:
    logits, y = _miscalibrated()
    before = nll(logits, y)
    temp, vec = fit_temperature(logits, y), fit_vector(logits, y)
    after_t, after_v = nll(temp(logits), y), nll(vec(logits), y)
    assert after_t < before - 0.1
    assert after_v < after_t  # the per-class offset is what temperature alone cannot remove
    assert 3.0 < 1 / float(temp.scale[0]) < 5.0  # T near the 4 the fixture put in
    again = fit_vector(logits, y)
    assert torch.equal(again.scale, vec.scale) and torch.equal(again.bias, vec.bias)


FAST = ["--dataset", "digits-lt", "--model", "mlp-small", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for method in ("erm", "balanced"):
        assert run_app(["train", *FAST, "--method", method, "--out", str(root / method)]) == 0
        out[method] = root / method / "checkpoints" / "best.pt"
    return out


def test_balanced_checkpoint_records_its_adjustment(teachers: dict[str, Path]) -> None:
    record = load_checkpoint(teachers["balanced"])["logit_adjustment"]
    assert record["method"] == "balanced" and record["tau"] == 1.0 and not record["uses_lambda"]
    assert sum(record["prior"]) == pytest.approx(1.0) and max(record["prior"]) > 5 * min(record["prior"])
    assert load_checkpoint(teachers["erm"])["logit_adjustment"] is None


def test_undo_adjust_without_record_is_one_line_and_writes_nothing(
    teachers: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    code = run_app(["distill", *FAST, "--teacher", str(teachers["erm"]), "--teacher-calibrate", "undo-adjust",
                    "--out", str(out), "--teacher-cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--teacher-calibrate undo-adjust: {teachers['erm']} records no logit adjustment" in err
    assert not out.exists()


@pytest.mark.parametrize("method", ["undo-adjust", "vector"])
def test_calibrated_distillation_reports_ece_and_reuses_the_raw_cache(
    method: str, teachers: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    base = ["distill", *FAST, "--teacher", str(teachers["balanced"]), "--method", "class-robust-kd",
            "--teacher-cache-dir", str(cache), "--no-quiet"]
    assert run_app([*base, "--out", str(tmp_path / "raw")]) == 0
    assert "cache miss" in capsys.readouterr().out
    assert run_app([*base, "--teacher-calibrate", method, "--out", str(tmp_path / "cal")]) == 0
    assert "cache hit" in capsys.readouterr().out  # the cache holds raw logits, whatever the calibration
    raw = json.loads((tmp_path / "raw/final.json").read_text())
    final = json.loads((tmp_path / "cal/final.json").read_text())
    assert raw["teacher_calibration"] == []
    (report,) = final["teacher_calibration"]
    assert report["method"] == method and report["checkpoint"] == str(teachers["balanced"])
    for split in ("val", "test"):
        ece = report[split]["class_ece"]
        assert set(ece["before"]) == set(ece["after"]) == {str(d) for d in range(10)}
    if method == "vector":
        assert report["val"]["nll"]["after"] < report["val"]["nll"]["before"]
    assert raw["splits"] != final["splits"]  # the calibrated targets trained a different student
