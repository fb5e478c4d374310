"""Per-sample loss terms: hand-computed values, invariants, dtypes, gradients and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import groupdistil as gd
from groupdistil.losses import compute_dtype


def _logits(batch: int, classes: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(batch, classes, generator=g)).to(dtype)


# ---- hand-computed values ----------------------------------------------------------------------


def test_cross_entropy_hand_computed() -> None:
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)], [math.log(2.0), 0.0]])
    y = torch.tensor([0, 1, 1])
    expected = torch.tensor([math.log(2.0), -math.log(0.75), -math.log(1.0 / 3.0)])
    out = gd.cross_entropy(logits, y)
    assert out.shape == (3,)
    torch.testing.assert_close(out, expected)


def test_distillation_hand_computed_with_temperature() -> None:
    # At T = 2 the teacher [0, 2 ln 3] gives p = [1/4, 3/4]; the student [0, 0] gives q = [1/2, 1/2].
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[0.0, 2 * math.log(3.0)]])
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    out = gd.distillation(student, teacher, temperature=2.0)
    torch.testing.assert_close(out, torch.tensor([4.0 * kl]))


def test_distillation_is_zero_for_identical_logits_and_has_no_teacher_gradient() -> None:
    s = _logits(5, 4, 0).requires_grad_()
    t = s.detach().clone().requires_grad_()
    out = gd.distillation(s, t, 3.0)
    torch.testing.assert_close(out, torch.zeros(5), atol=1e-6, rtol=0)
    gd.distillation(s, t + 1.0 * torch.randn(5, 4), 3.0).sum().backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_soft_cross_entropy_is_distillation_plus_teacher_entropy() -> None:
    s, t, temp = _logits(6, 5, 1), _logits(6, 5, 2), 2.5
    p = torch.softmax(t / temp, dim=1)
    entropy = -(p * p.log()).sum(dim=1)
    torch.testing.assert_close(
        gd.soft_cross_entropy(s, p, temp), gd.distillation(s, t, temp) + temp**2 * entropy
    )


def test_mixed_extremes_and_midpoint() -> None:
    ce, kd = torch.tensor([1.0, 2.0]), torch.tensor([5.0, 7.0])
    torch.testing.assert_close(gd.mixed(ce, kd, 0.0), ce)
    torch.testing.assert_close(gd.mixed(ce, kd, 1.0), kd)
    torch.testing.assert_close(gd.mixed(ce, kd, 0.25), torch.tensor([2.0, 3.25]))


def test_adjust_logits_hand_computed() -> None:
    t = torch.tensor([[1.0, 2.0, 3.0]])
    prior = [0.5, 0.25, 0.25]
    expected = t - 0.5 * torch.log(torch.tensor(prior))
    torch.testing.assert_close(gd.adjust_logits(t, prior, tau=0.5), expected)


def test_adjust_logits_weighted_hand_computed_and_uniform_lambda_is_balanced() -> None:
    t = torch.tensor([[1.0, 2.0, 3.0]])
    prior, lam = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]
    expected = t + torch.log(torch.tensor(lam) / torch.tensor(prior))
    torch.testing.assert_close(gd.adjust_logits_weighted(t, lam, prior), expected)
    # lambda = pi: no change; uniform lambda: the balanced adjustment up to a constant per row.
    torch.testing.assert_close(gd.adjust_logits_weighted(t, prior, prior), t)
    uniform = gd.adjust_logits_weighted(t, [1 / 3] * 3, prior)
    balanced = gd.adjust_logits(t, prior, tau=1.0)
    torch.testing.assert_close(uniform - balanced, torch.full_like(t, math.log(1 / 3)))


def test_post_hoc_adjustments_match_the_training_time_losses() -> None:
    # A teacher with t = log p(y|x) adjusted post hoc is exactly the minimiser of the matching
    # training-time loss: softmax(adjusted + offset) = p, where offset is the loss's logit shift.
    p = torch.softmax(_logits(4, 3, 3), dim=1)
    t = p.log()
    prior = torch.tensor([0.6, 0.3, 0.1])
    lam = torch.tensor([0.1, 0.3, 0.6])
    balanced = gd.adjust_logits(t, prior)
    torch.testing.assert_close(torch.softmax(balanced + prior.log(), dim=1), p)
    weighted = gd.adjust_logits_weighted(t, lam, prior)
    torch.testing.assert_close(torch.softmax(weighted + prior.log() - lam.log(), dim=1), p)


def test_logit_adjusted_cross_entropy_hand_computed() -> None:
    s = torch.zeros(1, 2)
    prior = [0.8, 0.2]
    # Logits become log(prior), so the loss is -log(prior[y]).
    out = gd.logit_adjusted_cross_entropy(s, torch.tensor([1]), prior, tau=1.0)
    torch.testing.assert_close(out, torch.tensor([-math.log(0.2)]))


# ---- properties --------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 6),
    classes=st.integers(1, 5),
    temp=st.floats(0.1, 10.0),
    seed=st.integers(0, 10_000),
)
def test_distillation_is_nonnegative_and_matches_torch_kl(
    batch: int, classes: int, temp: float, seed: int
) -> None:
    s, t = _logits(batch, classes, seed), _logits(batch, classes, seed + 1)
    out = gd.distillation(s, t, temp)
    assert out.shape == (batch,)
    assert (out >= -1e-5).all()
    ref = temp**2 * torch.nn.functional.kl_div(
        torch.log_softmax(s / temp, 1), torch.softmax(t / temp, 1), reduction="none"
    ).sum(1)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_give_finite_float32_losses_close_to_float32(dtype: torch.dtype) -> None:
    s32, t32 = _logits(16, 7, 4), _logits(16, 7, 5)
    s, t = s32.to(dtype), t32.to(dtype)
    y = torch.arange(16) % 7
    for low, ref in [
        (gd.cross_entropy(s, y), gd.cross_entropy(s.float(), y)),
        (gd.distillation(s, t, 4.0), gd.distillation(s.float(), t.float(), 4.0)),
    ]:
        assert low.dtype == torch.float32
        assert torch.isfinite(low).all()
        # The upcast happens before log_softmax: the result equals float32 on the rounded inputs.
        torch.testing.assert_close(low, ref)
    # ... and stays close to the losses of the unrounded float32 logits.
    torch.testing.assert_close(gd.cross_entropy(s, y), gd.cross_entropy(s32, y), atol=0.1, rtol=0.05)


def test_compute_dtype_is_float32_at_least() -> None:
    assert compute_dtype(torch.float16) == torch.float32
    assert compute_dtype(torch.bfloat16) == torch.float32
    assert compute_dtype(torch.float32) == torch.float32
    assert compute_dtype(torch.float64) == torch.float64
    assert gd.cross_entropy(_logits(2, 3, 0, torch.float64), torch.tensor([0, 1])).dtype == torch.float64


def test_single_sample_and_single_class() -> None:
    assert gd.cross_entropy(torch.zeros(1, 1), torch.tensor([0])).item() == 0.0
    assert gd.distillation(torch.zeros(1, 1), torch.ones(1, 1), 2.0).item() == 0.0
    out = gd.cross_entropy(torch.tensor([[1.0, 2.0]]), torch.tensor([1]))
    assert out.shape == (1,) and out.item() > 0


def test_gradcheck_float64() -> None:
    s = _logits(3, 4, 6, torch.float64).requires_grad_()
    t = _logits(3, 4, 7, torch.float64)
    y = torch.tensor([0, 3, 1])
    p = torch.softmax(t, dim=1)
    assert torch.autograd.gradcheck(lambda x: gd.cross_entropy(x, y), (s,))
    assert torch.autograd.gradcheck(lambda x: gd.distillation(x, t, 2.0), (s,))
    assert torch.autograd.gradcheck(lambda x: gd.soft_cross_entropy(x, p, 3.0), (s,))
    prior = [0.5, 0.2, 0.2, 0.1]
    assert torch.autograd.gradcheck(lambda x: gd.logit_adjusted_cross_entropy(x, y, prior), (s,))


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), "4"])
def test_bad_temperature(temperature: object) -> None:
    with pytest.raises(ValueError, match=r"temperature: expected a finite number > 0, got"):
        gd.distillation(torch.zeros(2, 3), torch.zeros(2, 3), temperature)  # type: ignore[arg-type]


def test_bad_shapes_name_the_argument_and_both_shapes() -> None:
    pattern = r"teacher_logits: expected the shape of student_logits \(2, 3\), got \(2, 4\)"
    with pytest.raises(ValueError, match=pattern):
        gd.distillation(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match=r"y: expected a \(2,\) integer tensor, got shape \(3,\)"):
        gd.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits: expected a \(B, C\) tensor, got shape \(3,\)"):
        gd.cross_entropy(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"kd: expected the shape of ce \(2,\), got \(3,\)"):
        gd.mixed(torch.zeros(2), torch.zeros(3), 0.5)


def test_bad_labels() -> None:
    with pytest.raises(ValueError, match=r"y: expected ids in \[0, 3\), got values in \[0, 3\]"):
        gd.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"y: expected an integer tensor, got dtype torch.float32"):
        gd.cross_entropy(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"alpha: expected a number in \[0, 1\], got"):
        gd.mixed(torch.zeros(2), torch.zeros(2), alpha)


@pytest.mark.parametrize(
    ("prior", "pattern"),
    [
        ([0.5, 0.6], r"class_prior: expected a distribution .* got sum 1\.1"),
        ([1.5, -0.5], r"class_prior: expected a distribution .* min -0\.5"),
        ([1.0], r"class_prior: expected 2 probabilities, got 1 values"),
    ],
)
def test_bad_class_prior(prior: list[float], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        gd.adjust_logits(torch.zeros(1, 2), prior)
    with pytest.raises(ValueError, match=pattern):
        gd.logit_adjusted_cross_entropy(torch.zeros(1, 2), torch.tensor([0]), prior)


def test_bad_class_weights_and_tau() -> None:
    with pytest.raises(ValueError, match=r"class_weights: expected a distribution"):
        gd.adjust_logits_weighted(torch.zeros(1, 2), [0.9, 0.9], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"tau: expected a finite number, got nan"):
        gd.adjust_logits(torch.zeros(1, 2), [0.5, 0.5], tau=float("nan"))
