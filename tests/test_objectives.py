"""Objectives: each equals its (term, aggregation) written out by hand, plus construction and bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import groupdistil as gd
from groupdistil.objectives import OBJECTIVES, class_weights_of

B, C, G = 12, 3, 4
PRIOR = [0.5, 0.3, 0.2]
COUNTS = [50.0, 20.0, 5.0, 1.0]


def _batch(
    seed: int = 0, batch: int = B, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = (2 * torch.randn(batch, C, generator=g)).to(dtype)
    t = (3 * torch.randn(batch, C, generator=g)).to(dtype)
    y = torch.randint(0, C, (batch,), generator=g)
    groups = torch.randint(0, G, (batch,), generator=g)
    return s, y, groups, t


def _mix(s: torch.Tensor, y: torch.Tensor, t: torch.Tensor, alpha: float, temp: float) -> torch.Tensor:
    return (1 - alpha) * gd.cross_entropy(s, y) + alpha * gd.distillation(s, t, temp)


# ---- plain objectives --------------------------------------------------------------------------


def test_erm_is_mean_cross_entropy_with_group_logs() -> None:
    s, y, groups, _ = _batch()
    out = gd.ERM(n_groups=G)(s, y, groups)
    ce = gd.cross_entropy(s, y)
    torch.testing.assert_close(out.loss, ce.mean())
    torch.testing.assert_close(out.group_loss, gd.group_risks(ce, groups, G).means)
    torch.testing.assert_close(out.group_count, torch.bincount(groups, minlength=G).float())
    assert out.weights is None
    assert gd.ERM()(s, y).group_loss.numel() == 0


def test_reweight_hand_computed_normalised_over_the_batch() -> None:
    s = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)], [0.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    groups = torch.tensor([0, 1, 2])
    out = gd.Reweight(group_counts=[1, 4, 0])(s, y, groups)
    # Weights 1, 1/4, 0 (group 2 has no training samples): (ln 2 + ln(4/3) / 4) / 1.25.
    expected = (math.log(2.0) + 0.25 * math.log(4.0 / 3.0)) / 1.25
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_kd_reweight_is_the_mix_weighted_by_inverse_counts() -> None:
    s, y, groups, t = _batch(3)
    out = gd.build_objective("kd-reweight", n_groups=G, group_counts=COUNTS, alpha=0.3, temperature=2.0)(
        s, y, groups, t
    )
    w = 1.0 / torch.tensor(COUNTS)[groups]
    expected = (w * _mix(s, y, t, 0.3, 2.0)).sum() / w.sum()
    torch.testing.assert_close(out.loss, expected)
    assert out.loss.item() != pytest.approx(_mix(s, y, t, 0.3, 2.0).mean().item(), rel=1e-3)
    assert out.weights is None  # static weights: nothing to log as q
    with pytest.raises(ValueError, match="groups: KDReweight needs a group id per sample"):
        gd.build_objective("kd-reweight", n_groups=G, group_counts=COUNTS)(s, y, None, t)
    with pytest.raises(ValueError, match="teacher_logits"):
        gd.build_objective("kd-reweight", n_groups=G, group_counts=COUNTS)(s, y, groups, None)


def test_kd_is_the_mean_mix_and_alpha_zero_needs_no_teacher() -> None:
    s, y, _, t = _batch()
    torch.testing.assert_close(gd.KD(0.3, 2.0)(s, y, teacher_logits=t).loss, _mix(s, y, t, 0.3, 2.0).mean())
    torch.testing.assert_close(
        gd.KD(1.0, 2.0)(s, y, teacher_logits=t).loss, gd.distillation(s, t, 2.0).mean()
    )
    kd0 = gd.KD(alpha=0.0)
    assert not kd0.requires_teacher and gd.KD(alpha=0.5).requires_teacher
    torch.testing.assert_close(kd0(s, y).loss, gd.ERM()(s, y).loss)


def test_logit_adjusted_is_mean_adjusted_cross_entropy() -> None:
    s, y, _, _ = _batch()
    out = gd.LogitAdjusted(PRIOR, tau=0.7)(s, y)
    expected = gd.cross_entropy(s + 0.7 * torch.log(torch.tensor(PRIOR)), y).mean()
    torch.testing.assert_close(out.loss, expected)


def test_robust_teacher_loss_validation_update_and_per_class_logs() -> None:
    s, y, groups, _ = _batch()
    obj = gd.RobustTeacher(PRIOR, tau=1.0, step_size=0.5, validation_every=8)
    assert obj.validation_every == 8
    before = obj(s, y, groups)  # data groups are ignored: the classes are the groups
    torch.testing.assert_close(before.loss, gd.cross_entropy(s + torch.log(torch.tensor(PRIOR)), y).mean())
    assert before.group_loss.shape == (C,)
    torch.testing.assert_close(before.group_count, torch.bincount(y, minlength=C).float())
    error = torch.tensor([0.1, 0.4, 0.9])
    obj.update_from_validation(error)
    lam = torch.exp(0.5 * error)
    lam = lam / lam.sum()
    torch.testing.assert_close(obj.lam.q, lam)
    after = obj(s, y)
    shift = torch.log(torch.tensor(PRIOR)) - lam.log()
    torch.testing.assert_close(after.loss, gd.cross_entropy(s + shift, y).mean())
    torch.testing.assert_close(after.weights, lam)
    with pytest.raises(ValueError, match=r"per_group_error: expected a \(3,\) tensor .* got \(2,\)"):
        obj.update_from_validation(torch.ones(2))


# ---- group DRO and GroupDistil -----------------------------------------------------------------


def test_dro_objective_is_group_dro_on_cross_entropy() -> None:
    s, y, groups, _ = _batch()
    obj = gd.DRO(G, step_size=0.2, group_counts=COUNTS, adjustment=1.0)
    ref = gd.GroupDRO(G, step_size=0.2, group_counts=COUNTS, adjustment=1.0)
    for seed in range(3):
        s, y, groups, _ = _batch(seed)
        out = obj(s, y, groups)
        torch.testing.assert_close(out.loss, ref(gd.cross_entropy(s, y), groups))
    torch.testing.assert_close(out.weights, ref.q)
    assert not obj.requires_teacher


@pytest.mark.parametrize("dro_on", ["both", "kd", "ce"])
def test_groupdistil_equals_group_dro_on_the_chosen_part(dro_on: str) -> None:
    alpha, temp = 0.4, 3.0
    obj = gd.GroupDistil(G, alpha=alpha, temperature=temp, step_size=0.3, dro_on=dro_on)
    ref = gd.GroupDRO(G, step_size=0.3)
    for seed in range(3):
        s, y, groups, t = _batch(seed)
        ce = (1 - alpha) * gd.cross_entropy(s, y)
        kd = alpha * gd.distillation(s, t, temp)
        if dro_on == "both":
            expected = ref(ce + kd, groups)
        elif dro_on == "kd":
            expected = ref(kd, groups) + ce.mean()
        else:
            expected = ref(ce, groups) + kd.mean()
        out = obj(s, y, groups, t)
        torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(obj.dro.q, ref.q)
    assert out.group_loss.shape == out.group_count.shape == out.weights.shape == (G,)


def test_groupdistil_hand_computed_single_step() -> None:
    # Two samples, one per group, student uniform, teacher equal to student: kd = 0, ce = ln 2.
    s = torch.zeros(2, 2)
    y = torch.tensor([0, 1])
    obj = gd.GroupDistil(2, alpha=0.5, temperature=2.0, step_size=1.0)
    out = obj(s, y, torch.tensor([0, 1]), s.clone())
    torch.testing.assert_close(obj.dro.q, torch.tensor([0.5, 0.5]))  # equal losses: q stays uniform
    assert out.loss.item() == pytest.approx(0.5 * math.log(2.0), rel=1e-6)


def test_groupdistil_step_size_zero_is_a_fixed_group_weighting() -> None:
    counts = [10.0, 0.0, 5.0, 2.0]  # group 1 has no training samples: weight 0
    obj = gd.GroupDistil(G, alpha=0.5, temperature=2.0, step_size=0.0, group_counts=counts)
    q0 = torch.tensor([1 / 3, 0.0, 1 / 3, 1 / 3])
    for seed in range(3):
        s, y, groups, t = _batch(seed)
        means = gd.group_risks(_mix(s, y, t, 0.5, 2.0), groups, G).means
        torch.testing.assert_close(obj(s, y, groups, t).loss, (q0 * means).sum())
    torch.testing.assert_close(obj.dro.q, q0)


@pytest.mark.parametrize("dro_on", ["both", "kd", "ce"])
def test_groupdistil_alpha_zero_removes_the_teacher(dro_on: str) -> None:
    obj = gd.GroupDistil(G, alpha=0.0, step_size=0.3, dro_on=dro_on)
    assert not obj.requires_teacher
    ce_only = gd.GroupDistil(G, alpha=0.0, step_size=0.3, dro_on="both")
    s, y, groups, _ = _batch()
    out = obj(s, y, groups)  # no teacher logits at all
    if dro_on == "kd":
        # DRO acts on the (zero) kd term; the cross-entropy is a plain mean.
        torch.testing.assert_close(out.loss, gd.cross_entropy(s, y).mean())
    else:
        torch.testing.assert_close(out.loss, gd.DRO(G, step_size=0.3)(s, y, groups).loss)
    torch.testing.assert_close(ce_only(s, y, groups).loss, gd.DRO(G, step_size=0.3)(s, y, groups).loss)


def test_groupdistil_absent_groups_single_sample_single_group() -> None:
    s, y, _, t = _batch(batch=1)
    obj = gd.GroupDistil(G, step_size=1.0)
    out = obj(s, y, torch.tensor([2]), t)
    assert out.group_count.tolist() == [0.0, 0.0, 1.0, 0.0]
    assert obj.dro.q.argmax().item() == 2
    torch.testing.assert_close(out.loss, obj.dro.q[2] * _mix(s, y, t, 0.5, 4.0)[0])
    one = gd.GroupDistil(1, step_size=1.0)
    s, y, _, t = _batch()
    out = one(s, y, torch.zeros(B, dtype=torch.long), t)
    torch.testing.assert_close(out.loss, _mix(s, y, t, 0.5, 4.0).mean())


def test_groupdistil_eval_mode_does_not_move_q_and_state_dict_round_trips() -> None:
    obj = gd.GroupDistil(G, step_size=0.5, group_counts=COUNTS, adjustment=1.0, normalize_loss=True)
    for seed in range(3):
        s, y, groups, t = _batch(seed)
        obj(s, y, groups, t)
    q = obj.dro.q.clone()
    obj.eval()
    obj(*_batch(7))
    assert torch.equal(obj.dro.q, q)
    fresh = gd.GroupDistil(G, step_size=0.5, group_counts=COUNTS, adjustment=1.0, normalize_loss=True)
    assert "dro.q" in obj.state_dict()
    fresh.load_state_dict(obj.state_dict())
    assert torch.equal(fresh.dro.q, q)


# ---- class-robust distillation -----------------------------------------------------------------


def _class_risks_by_hand(
    s: torch.Tensor, y: torch.Tensor, t: torch.Tensor, prior: list[float], alpha: float, temp: float
) -> torch.Tensor:
    """R_k from METHODS.md with a dense label one-hot and explicit per-class loops."""
    log_p = torch.log_softmax(s, dim=1)
    log_pt = torch.log_softmax(s / temp, dim=1)
    p_teacher = torch.softmax(t / temp, dim=1)
    risks = []
    for k in range(s.shape[1]):
        label = ((y == k).float() * -log_p[:, k]).sum()
        teacher = (p_teacher[:, k] * -(temp**2) * log_pt[:, k]).sum()
        risks.append(((1 - alpha) * label + alpha * teacher) / (s.shape[0] * prior[k]))
    return torch.stack(risks)


def test_class_robust_standard_is_kd_in_soft_cross_entropy_form() -> None:
    s, y, _, t = _batch()
    s = s.requires_grad_()
    obj = gd.ClassRobustKD(C, PRIOR, alpha=0.6, temperature=2.0, mode="standard")
    out = obj(s, y, teacher_logits=t)
    soft = gd.soft_cross_entropy(s, torch.softmax(t / 2.0, dim=1), 2.0)
    expected = (0.4 * gd.cross_entropy(s, y) + 0.6 * soft).mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.weights, torch.tensor(PRIOR))
    # It differs from KD by the teacher's entropy only, so the gradients are KD's.
    (grad,) = torch.autograd.grad(out.loss, s)
    (kd_grad,) = torch.autograd.grad(gd.KD(0.6, 2.0)(s, y, teacher_logits=t).loss, s)
    torch.testing.assert_close(grad, kd_grad)


def test_class_robust_balanced_is_the_class_mean() -> None:
    s, y, _, t = _batch()
    out = gd.ClassRobustKD(C, PRIOR, alpha=0.3, temperature=2.0, mode="balanced")(s, y, teacher_logits=t)
    risks = _class_risks_by_hand(s, y, t, PRIOR, 0.3, 2.0)
    torch.testing.assert_close(out.group_loss, risks)
    torch.testing.assert_close(out.loss, risks.mean())
    torch.testing.assert_close(out.group_count, torch.bincount(y, minlength=C).float())


def test_class_robust_robust_mode_updates_lambda_from_training_risks() -> None:
    obj = gd.ClassRobustKD(C, PRIOR, alpha=0.5, temperature=2.0, mode="robust", step_size=0.05)
    lam = torch.full((C,), 1 / C)
    for seed in range(3):
        s, y, _, t = _batch(seed)
        risks = _class_risks_by_hand(s, y, t, PRIOR, 0.5, 2.0)
        lam = lam * torch.exp(0.05 * risks)
        lam = lam / lam.sum()
        out = obj(s, y, teacher_logits=t)
        torch.testing.assert_close(out.loss, (lam * risks).sum())  # the updated lambda
    torch.testing.assert_close(obj.lam.q, lam)
    torch.testing.assert_close(out.weights, lam)


def test_class_robust_tradeoff_interpolates_standard_and_robust() -> None:
    kwargs = {"alpha": 0.5, "temperature": 2.0, "step_size": 0.05}
    trade = gd.ClassRobustKD(C, PRIOR, mode="tradeoff", beta=0.25, **kwargs)
    robust = gd.ClassRobustKD(C, PRIOR, mode="robust", **kwargs)
    standard = gd.ClassRobustKD(C, PRIOR, mode="standard", **kwargs)
    for seed in range(3):
        s, y, _, t = _batch(seed)
        expected = 0.75 * standard(s, y, teacher_logits=t).loss + 0.25 * robust(s, y, teacher_logits=t).loss
        torch.testing.assert_close(trade(s, y, teacher_logits=t).loss, expected)
    torch.testing.assert_close(trade.lam.q, robust.lam.q)
    zero = gd.ClassRobustKD(C, PRIOR, mode="tradeoff", beta=0.0, **kwargs)
    s, y, _, t = _batch()
    torch.testing.assert_close(zero(s, y, teacher_logits=t).loss, standard(s, y, teacher_logits=t).loss)


def test_class_robust_lambda_from_validation_only() -> None:
    obj = gd.ClassRobustKD(C, PRIOR, mode="robust", step_size=0.5, lambda_source="val", validation_every=4)
    assert obj.validation_every == 4
    s, y, _, t = _batch()
    obj(s, y, teacher_logits=t)
    torch.testing.assert_close(obj.lam.q, torch.full((C,), 1 / C))  # training batches leave lambda alone
    obj.update_from_validation(torch.tensor([0.0, 0.0, 1.0]))
    lam = torch.tensor([1.0, 1.0, math.exp(0.5)])
    torch.testing.assert_close(obj.lam.q, lam / lam.sum())
    assert gd.ClassRobustKD(C, PRIOR).validation_every is None


def test_class_robust_zero_prior_class_and_alpha_zero() -> None:
    prior = [0.6, 0.4, 0.0]
    s, y, _, t = _batch()
    y = y % 2  # class 2 never appears, as its prior says
    out = gd.ClassRobustKD(C, prior, alpha=0.5, temperature=2.0, mode="balanced")(s, y, teacher_logits=t)
    risks = _class_risks_by_hand(s, y, t, [0.6, 0.4, 1.0], 0.5, 2.0)
    assert out.group_loss[2].item() == 0.0
    torch.testing.assert_close(out.loss, risks[:2].mean())
    robust = gd.ClassRobustKD(C, prior, step_size=1.0)
    robust(s, y, teacher_logits=t)
    assert robust.lam.q[2].item() == 0.0
    no_teacher = gd.ClassRobustKD(C, PRIOR, alpha=0.0, mode="standard")
    assert not no_teacher.requires_teacher
    torch.testing.assert_close(no_teacher(s, y).loss, gd.cross_entropy(s, y).mean())


# ---- dtypes and gradients ----------------------------------------------------------------------


def _all_objectives() -> dict[str, gd.Objective]:
    return {
        name: gd.build_objective(name, n_groups=G, n_classes=C, group_counts=COUNTS, class_prior=PRIOR)
        for name in gd.OBJECTIVES
    }


@pytest.mark.parametrize("name", list(gd.OBJECTIVES))
def test_gradcheck_float64(name: str) -> None:
    obj = _all_objectives()[name].eval()  # eval: q and lambda stay put between gradcheck's calls
    s, y, groups, t = _batch(3, batch=5, dtype=torch.float64)
    out = obj(s, y, groups, t)
    assert out.loss.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: obj(x, y, groups, t).loss, (s.requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(gd.OBJECTIVES))
def test_low_precision_logits_give_finite_float32_losses(name: str, dtype: torch.dtype) -> None:
    s, y, groups, t = _batch(4)
    low = _all_objectives()[name](s.to(dtype), y, groups, t.to(dtype))
    ref = _all_objectives()[name](s, y, groups, t)
    assert low.loss.dtype == torch.float32 and torch.isfinite(low.loss)
    torch.testing.assert_close(low.loss, ref.loss, rtol=0.05, atol=0.05)


# ---- construction ------------------------------------------------------------------------------


def test_build_objective_by_name_with_options() -> None:
    obj = gd.build_objective("groupdistil", n_groups=G, group_counts=COUNTS, alpha=0.2, dro_on="kd")
    assert isinstance(obj, gd.GroupDistil) and obj.alpha == 0.2 and obj.dro_on == "kd"
    assert obj.dro.group_counts.tolist() == COUNTS
    crkd = gd.build_objective("class-robust-kd", n_classes=C, class_prior=PRIOR, mode="tradeoff", beta=0.5)
    assert isinstance(crkd, gd.ClassRobustKD) and crkd.mode == "tradeoff" and crkd.beta == 0.5
    classes = {name: type(o) for name, o in _all_objectives().items()}
    assert classes == {
        "erm": gd.ERM,
        "reweight": gd.Reweight,
        "jtt": gd.JTT,
        "group-dro": gd.DRO,
        "balanced": gd.LogitAdjusted,
        "robust-teacher": gd.RobustTeacher,
        "kd": gd.KD,
        "dkd": gd.DKD,
        "ltkd": gd.LTKD,
        "kd-reweight": gd.KDReweight,
        "groupdistil": gd.GroupDistil,
        "class-robust-kd": gd.ClassRobustKD,
    }


def test_objective_options_are_the_documented_defaults() -> None:
    assert gd.objective_options("groupdistil") == {
        "alpha": 0.5,
        "temperature": 4.0,
        "step_size": 0.01,
        "adjustment": 0.0,
        "normalize_loss": False,
        "dro_on": "both",
        # The distillation term and its options (None: the term's own default, docs/methods.md).
        "kd_term": "kd",
        "dkd_alpha": None,
        "dkd_beta": None,
        "dkd_warmup": None,
        "ltkd_alpha": None,
        "ltkd_beta": None,
    }
    assert gd.objective_options("ltkd") == {"temperature": 4.0, "ltkd_alpha": 1.0, "ltkd_beta": None}
    assert gd.objective_options("kd") == {"alpha": 0.5, "temperature": 4.0}
    assert gd.objective_options("erm") == {}
    assert gd.objective_options("class-robust-kd")["mode"] == "robust"


def test_build_objective_errors() -> None:
    with pytest.raises(ValueError, match=r"objective: unknown name 'nope'; expected one of erm, reweight"):
        gd.build_objective("nope")
    with pytest.raises(ValueError, match=r"objective kd: unknown option 'eta'; expected one of alpha"):
        gd.build_objective("kd", eta=0.1)
    with pytest.raises(ValueError, match=r"objective groupdistil: needs n_groups from the dataset"):
        gd.build_objective("groupdistil")
    with pytest.raises(ValueError, match=r"objective reweight: needs group_counts from the dataset"):
        gd.build_objective("reweight", n_groups=2)
    with pytest.raises(ValueError, match=r"group_counts: expected 3 values \(n_groups\), got 2 values"):
        gd.build_objective("reweight", n_groups=3, group_counts=[1, 2])


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: gd.KD(alpha=1.5), r"alpha: expected a number in \[0, 1\], got 1.5"),
        (lambda: gd.GroupDistil(G, alpha=-0.5), r"alpha: expected a number in \[0, 1\], got -0.5"),
        (lambda: gd.ClassRobustKD(C, PRIOR, alpha=2), r"alpha: expected a number in \[0, 1\], got 2"),
        (lambda: gd.KD(temperature=0.0), r"temperature: expected a finite number > 0, got 0.0"),
        (lambda: gd.GroupDistil(G, temperature=-1), r"temperature: expected a finite number > 0, got -1"),
        (lambda: gd.ClassRobustKD(C, PRIOR, temperature=0), r"temperature: expected a finite number > 0"),
        (lambda: gd.GroupDistil(G, step_size=-1.0), r"step_size: expected a finite number >= 0, got -1.0"),
        (lambda: gd.DRO(G, step_size=-0.1), r"step_size: expected a finite number >= 0, got -0.1"),
        (lambda: gd.ClassRobustKD(C, PRIOR, step_size=-2), r"step_size: expected a finite number >= 0"),
        (lambda: gd.RobustTeacher(PRIOR, step_size=-2), r"step_size: expected a finite number >= 0"),
        (lambda: gd.ClassRobustKD(C, [0.5, 0.6, 0.1]), r"class_prior: expected a distribution .* sum 1.2"),
        (lambda: gd.ClassRobustKD(C, [0.5, 0.5]), r"class_prior: expected 3 probabilities, got 2 values"),
        (lambda: gd.LogitAdjusted([0.7, 0.7]), r"class_prior: expected a distribution"),
        (lambda: gd.RobustTeacher([1.2, -0.2]), r"class_prior: expected a distribution .* min -0.2"),
        (lambda: gd.ClassRobustKD(C, PRIOR, beta=1.1), r"beta: expected a number in \[0, 1\], got 1.1"),
        (lambda: gd.ClassRobustKD(C, PRIOR, mode="x"), r"mode: expected one of standard, balanced"),
        (lambda: gd.ClassRobustKD(C, PRIOR, lambda_source="x"), r"lambda_source: expected one of train"),
        (lambda: gd.GroupDistil(G, dro_on="x"), r"dro_on: expected one of both, kd, ce, got 'x'"),
        (lambda: gd.GroupDistil(0), r"n_groups: expected an integer >= 1, got 0"),
        (lambda: gd.Reweight([-1.0, 2.0]), r"group_counts: expected non-negative counts"),
    ],
)
def test_bad_arguments(make: Callable[[], object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        make()


def test_bad_call_inputs() -> None:
    s, y, groups, t = _batch()
    obj = gd.GroupDistil(G)
    with pytest.raises(ValueError, match=r"groups: expected ids in \[0, 4\), got values in \[4, 4\]"):
        obj(s, y, torch.full((B,), 4), t)
    with pytest.raises(ValueError, match=r"groups: expected a \(12,\) integer tensor, got shape \(11,\)"):
        obj(s, y, groups[:-1], t)
    with pytest.raises(ValueError, match=r"teacher_logits: expected the shape of student_logits \(12, 3\)"):
        obj(s, y, groups, t[:, :2])
    with pytest.raises(ValueError, match=r"teacher_logits: GroupDistil needs teacher logits, got None"):
        obj(s, y, groups)
    with pytest.raises(ValueError, match=r"groups: GroupDistil needs a group id per sample, got None"):
        obj(s, y, None, t)
    with pytest.raises(ValueError, match=r"y: expected ids in \[0, 3\), got values in \[0, 7\]"):
        obj(s, torch.full((B,), 7).index_fill(0, torch.tensor([0]), 0), groups, t)
    with pytest.raises(ValueError, match=r"student_logits: expected 3 classes, got shape \(12, 4\)"):
        gd.ClassRobustKD(C, PRIOR)(torch.zeros(B, 4), y, teacher_logits=torch.zeros(B, 4))
    with pytest.raises(ValueError, match=r"groups: Reweight needs a group id per sample, got None"):
        gd.Reweight(COUNTS)(s, y)
    with pytest.raises(NotImplementedError, match="GroupDistil has no validation-driven weights"):
        obj.update_from_validation(torch.zeros(G))


# ---- lambda's owner, old checkpoints, the separate terms ----------------------------------------


@pytest.mark.parametrize("make", [lambda: gd.RobustTeacher(PRIOR, step_size=0.5),
                                  lambda: gd.ClassRobustKD(C, PRIOR, step_size=0.5)])
def test_class_weights_of_older_checkpoints_still_load(make) -> None:
    obj = make()
    obj.update_from_validation(torch.tensor([0.1, 0.4, 0.9]))
    new = obj.state_dict()
    assert "lam.q" in new and not any(k.startswith("dro.") for k in new)
    # The state dict of the versions that kept lambda in a GroupDRO (it had an adjustment of 0).
    old = {("dro." + k[4:] if k.startswith("lam.") else k): v for k, v in new.items()}
    old["dro.adjustment"] = torch.zeros(C)
    fresh = make()
    fresh.load_state_dict(old)
    assert torch.equal(fresh.lam.q, obj.lam.q)
    assert torch.equal(class_weights_of(old), obj.lam.q) and torch.equal(class_weights_of(new), obj.lam.q)
    assert class_weights_of(gd.ERM().state_dict()) is None


def test_terms_are_the_weighted_ce_and_kd_means() -> None:
    s, y, groups, t = _batch()
    out = gd.KD(alpha=0.3, temperature=2.0)(s, y, groups, t)
    ce, kd = 0.7 * gd.cross_entropy(s, y).mean(), 0.3 * gd.distillation(s, t, 2.0).mean()
    torch.testing.assert_close(out.terms["ce"], ce)
    torch.testing.assert_close(out.terms["kd"], kd)
    torch.testing.assert_close(out.loss, ce + kd)  # a plain mean: the terms add up to the loss
    assert not out.terms["ce"].requires_grad
    assert set(gd.ERM()(s, y).terms) == {"ce"}
    crkd = gd.ClassRobustKD(C, PRIOR, alpha=0.5, temperature=2.0, mode="standard")(s, y, teacher_logits=t)
    torch.testing.assert_close(crkd.terms["ce"] + crkd.terms["kd"], crkd.loss)  # w = pi: the plain mean


def test_the_registry_says_what_each_objective_needs():
    # The registry's class facts are what the CLI (distill vs train), the runner (runs without training
    # groups) and the report (worst-class panels) read: each must match the objective's behaviour.
    torch.manual_seed(0)
    logits, teacher = torch.randn(8, 2), torch.randn(8, 2)
    y = torch.tensor([0, 1] * 4)
    for name, cls in OBJECTIVES.items():
        obj = gd.build_objective(name, n_groups=4, n_classes=2, group_counts=torch.tensor([3.0, 1, 1, 3]),
                                 class_prior=torch.tensor([0.5, 0.5]))
        assert obj.requires_teacher == cls.distills, name
        if cls.uses_groups:
            with pytest.raises(ValueError, match="group id per sample"):
                obj(logits, y, None, teacher)
        else:
            assert torch.isfinite(obj(logits, y, None, teacher).loss), name
        # balanced and ltkd aim at the rare classes without class weights of their own.
        assert cls.class_level == (obj.weights_over == "classes" or name in ("balanced", "ltkd")), name
