"""The DKD and LTKD distillation terms, against independent float64 loops; their objectives, and the
``kd_term`` of the robust aggregations, from Python, the command line and YAML."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import groupdistil as gd
from groupdistil.cli.app import run_app
from groupdistil.kd_terms import DistillTerm

# ---- brute force: plain Python floats, one sample and one class at a time -------------------------


def _softmax(z: list[float]) -> list[float]:
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def _dkd_loop(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float, a: float, b: float) -> list[float]:
    out = []
    for si, ti, yi in zip(s.tolist(), t.tolist(), y.tolist()):
        ps, pt = _softmax([v / T for v in si]), _softmax([v / T for v in ti])
        tckd = _kl([pt[yi], 1 - pt[yi]], [ps[yi], 1 - ps[yi]])
        others = [k for k in range(len(si)) if k != yi]
        ns = _softmax([si[k] / T for k in others])
        nt = _softmax([ti[k] / T for k in others])
        out.append(T * T * (a * tckd + b * _kl(nt, ns)))
    return out


def _ltkd_loop(s, t, groups: list[int], shares: list[float], T: float, a: float, b: float) -> list[float]:
    k = max(groups) + 1
    out = []
    for si, ti in zip(s.tolist(), t.tolist()):
        ps, pt = _softmax([v / T for v in si]), _softmax([v / T for v in ti])
        ms = [sum(p for p, g in zip(ps, groups) if g == G) for G in range(k)]
        mt = [sum(p for p, g in zip(pt, groups) if g == G) for G in range(k)]
        r = [m / P for m, P in zip(mt, shares)]
        r = [v / sum(r) for v in r]
        within = 0.0
        for G in range(k):
            idx = [c for c, g in enumerate(groups) if g == G]
            within += _kl([pt[c] / mt[G] for c in idx], [ps[c] / ms[G] for c in idx])
        out.append(T * T * (a * _kl(r, ms) + b / k * within))
    return out


def _logits(b: int, c: int, seed: int = 0, scale: float = 3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, c, generator=g, dtype=dtype), scale * torch.randn(b, c, generator=g, dtype=dtype),
            torch.randint(0, c, (b,), generator=g))


# ---- DKD ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("c,T,a,b", [(2, 1.0, 1.0, 8.0), (5, 4.0, 1.0, 8.0), (37, 2.0, 0.5, 3.0), (100, 4.0, 2.0, 0.0)])
def test_dkd_equals_a_float64_loop(c, T, a, b):
    s, t, y = _logits(16, c, seed=c)
    got = gd.decoupled_distillation(s, t, y, T, a, b)
    assert got.dtype == torch.float64 and got.shape == (16,)
    torch.testing.assert_close(got, torch.tensor(_dkd_loop(s, t, y, T, a, b), dtype=torch.float64),
                               rtol=1e-10, atol=1e-12)
    # float32 logits: the same to float precision.
    got32 = gd.decoupled_distillation(s.float(), t.float(), y, T, a, b)
    torch.testing.assert_close(got32, got.float(), rtol=1e-4, atol=1e-5)


def test_dkd_with_equal_weights_is_not_kd_but_kd_is_its_reweighting():
    # DKD's identity (Zhao et al., eq. 5): KD = TCKD + (1 - p_t[y]) NCKD; check it from our terms.
    s, t, y = _logits(32, 10, seed=3)
    T = 2.0
    tckd = gd.decoupled_distillation(s, t, y, T, 1.0, 0.0)
    nckd = gd.decoupled_distillation(s, t, y, T, 0.0, 1.0)
    pt_y = torch.softmax(t / T, dim=1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(tckd + (1 - pt_y) * nckd, gd.distillation(s, t, T), rtol=1e-10, atol=1e-12)


def test_dkd_objective_mean_and_linear_warmup():
    s, t, y = _logits(16, 10, seed=4)
    obj = gd.build_objective("dkd", dkd_warmup=4)
    term = torch.tensor(_dkd_loop(s, t, y, 4.0, 1.0, 8.0), dtype=torch.float64)
    ce = gd.cross_entropy(s, y)
    for epoch, w in [(0, 0.25), (2, 0.75), (3, 1.0), (10, 1.0)]:
        obj.set_epoch(epoch)
        out = obj(s, y, teacher_logits=t)
        torch.testing.assert_close(out.loss, (ce + w * term).mean())
        torch.testing.assert_close(out.terms["kd"], (w * term).mean())
    no_warmup = gd.build_objective("dkd", dkd_warmup=0)
    torch.testing.assert_close(no_warmup(s, y, teacher_logits=t).loss, (ce + term).mean())
    assert gd.objective_options("dkd") == {"temperature": 4.0, "dkd_alpha": 1.0, "dkd_beta": 8.0, "dkd_warmup": 20}


# ---- LTKD: the decomposition and the term --------------------------------------------------------


@pytest.mark.parametrize("groups", [[0] * 7, [0, 1, 0, 1, 1, 0, 1], [2, 0, 1, 1, 2, 0, 0], list(range(7)),
                                    [0, 0, 0, 1, 1, 2, 3]])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kl_decomposes_over_any_partition_of_the_classes(groups, T):
    s, t, _ = _logits(64, 7, seed=len(set(groups)))
    parts = gd.group_kl_decomposition(s, t, torch.tensor(groups), T)
    cross = (parts.log_mass_t.exp() * (parts.log_mass_t - parts.log_mass_s)).sum(1)
    rebuilt = cross + (parts.log_mass_t.exp() * parts.within).sum(1)
    assert (rebuilt - gd.distillation(s, t, T) / T**2).abs().max() < 1e-6
    # float32 logits too
    p32 = gd.group_kl_decomposition(s.float(), t.float(), torch.tensor(groups), T)
    c32 = (p32.log_mass_t.exp() * (p32.log_mass_t - p32.log_mass_s)).sum(1) + (p32.log_mass_t.exp() * p32.within).sum(1)
    assert (c32.double() - gd.distillation(s, t, T) / T**2).abs().max() < 1e-5


def test_ltkd_equals_a_float64_loop():
    counts = [50, 40, 30, 20, 12, 8, 5, 3, 2, 1]
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    groups = gd.class_groups_by_count(prior)
    assert groups.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    shares = [float(prior[groups == g].sum()) for g in range(3)]
    s, t, _ = _logits(12, 10, seed=7)
    for a, b in [(1.0, None), (0.5, 2.0)]:
        got = gd.long_tail_distillation(s, t, groups, shares, 4.0, a, b)
        want = _ltkd_loop(s, t, groups.tolist(), shares, 4.0, a, 3.0 if b is None else b)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    # The objective: ce + the term, groups from the prior.
    obj = gd.build_objective("ltkd", class_prior=prior)
    y = torch.arange(12) % 10
    want = gd.cross_entropy(s, y) + torch.tensor(_ltkd_loop(s, t, groups.tolist(), shares, 4.0, 1.0, 3.0),
                                                 dtype=torch.float64)
    torch.testing.assert_close(obj(s, y, teacher_logits=t).loss, want.float().mean().double(), rtol=1e-5, atol=1e-6)


def test_ltkd_with_equal_groups_and_balanced_teacher_masses_is_kd():
    # Equal training shares and a teacher whose group masses are equal: r_t = m_t = 1/K, so with
    # beta = 1 the equally weighted within-group terms are exactly the m_t-weighted ones: LTKD = KD.
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    s, base, _ = _logits(20, 2, seed=8)
    t = torch.cat([base, base[:, [1, 0]], base], dim=1)  # every group's logsumexp is the same
    s = torch.randn(20, 6, dtype=torch.float64)
    got = gd.long_tail_distillation(s, t, groups, [1 / 3] * 3, 2.0, 1.0, 1.0)
    torch.testing.assert_close(got, gd.distillation(s, t, 2.0), rtol=1e-10, atol=1e-12)
    # One group (C classes in one): no cross-group term, and beta = K = 1 gives KD.
    one = gd.long_tail_distillation(s, t, torch.zeros(6, dtype=torch.long), [1.0], 2.0)
    torch.testing.assert_close(one, gd.distillation(s, t, 2.0), rtol=1e-10, atol=1e-12)


def test_two_groups_and_single_class_groups_have_no_within_term():
    # C = 2: each class is its own group (METHODS.md), every within-group term is 0, and LTKD is the
    # rebalanced binary KL alone.
    assert gd.class_groups_by_count([3.0, 7.0]).tolist() == [1, 0]
    s, t, _ = _logits(10, 2, seed=9)
    parts = gd.group_kl_decomposition(s, t, torch.tensor([1, 0]), 4.0)
    assert torch.equal(parts.within, torch.zeros_like(parts.within))
    got = gd.long_tail_distillation(s, t, torch.tensor([1, 0]), [0.7, 0.3], 4.0)
    want = _ltkd_loop(s, t, [1, 0], [0.7, 0.3], 4.0, 1.0, 2.0)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    # C = 4: head and tail of 2 classes each, the medium group is empty and left out.
    assert gd.class_groups_by_count([1, 5, 5, 2]).tolist() == [1, 0, 0, 1]


def test_grouping_ties_go_by_class_id_and_an_unseen_class_is_tail():
    assert gd.class_groups_by_count([4, 4, 4, 4, 4, 4]).tolist() == [0, 0, 1, 1, 2, 2]
    # A class absent from training (count 0) is in the tail group; the term stays finite because the
    # tail has other classes with samples.
    counts = torch.tensor([9.0, 0.0, 7.0, 5.0, 3.0, 2.0])
    groups = gd.class_groups_by_count(counts)
    assert groups.tolist() == [0, 2, 0, 1, 1, 2]
    obj = gd.LTKD(counts / counts.sum(), temperature=2.0)
    s, t, y = _logits(8, 6, seed=10, dtype=torch.float32)
    out = obj(s.requires_grad_(), y, teacher_logits=t)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(s.grad).all()
    # A whole group without training samples has no share to divide by: refused.
    with pytest.raises(ValueError, match="group_prior: expected training samples in every group"):
        gd.LTKD(torch.tensor([0.5, 0.5, 0.0]))


def test_a_class_with_no_teacher_mass_in_its_group_keeps_the_terms_finite():
    # Extreme logits: whole groups of the teacher's distribution underflow in linear space; the
    # log-space masses keep the decomposition exact and the gradients finite.
    s = torch.tensor([[0.0, 1.0, -2.0, 3.0, 0.5, -1.0]], requires_grad=True)
    t = torch.tensor([[400.0, -400.0, 0.0, -500.0, -300.0, 350.0]])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    got = gd.long_tail_distillation(s, t, groups, [0.5, 0.3, 0.2], 1.0)
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(s.grad).all()
    parts = gd.group_kl_decomposition(s.double(), t.double(), groups, 1.0)
    rebuilt = (parts.log_mass_t.exp() * (parts.log_mass_t - parts.log_mass_s)).sum(1) + (
        parts.log_mass_t.exp() * parts.within).sum(1)
    torch.testing.assert_close(rebuilt, gd.distillation(s.double(), t.double(), 1.0))


# ---- gradients: the written-out backward against autograd of the plain composite form ---------------


def _dkd_autograd(s, t, y, T, a, b):
    mask = torch.nn.functional.one_hot(y, s.shape[1]).bool()
    zs, zt = s / T, t / T
    ps, pt = torch.softmax(zs, 1), torch.softmax(zt, 1)
    bs = torch.stack([ps[mask], 1 - ps[mask]], 1)
    bt = torch.stack([pt[mask], 1 - pt[mask]], 1)
    log_ns = torch.log_softmax(zs.masked_fill(mask, -torch.inf), 1).masked_fill(mask, 0)
    log_nt = torch.log_softmax(zt.masked_fill(mask, -torch.inf), 1).masked_fill(mask, 0)
    return T * T * (a * (bt * (bt.log() - bs.log())).sum(1) + b * (log_nt.exp() * (log_nt - log_ns)).sum(1))


def _ltkd_autograd(s, t, groups, shares, T, a, b):
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    k = int(groups.max()) + 1
    ms = torch.stack([ps[:, groups == g].sum(1) for g in range(k)], 1)
    mt = torch.stack([pt[:, groups == g].sum(1) for g in range(k)], 1)
    r = mt / torch.tensor(shares, dtype=s.dtype)
    r = r / r.sum(1, keepdim=True)
    within = sum(((pt[:, groups == g] / mt[:, g:g + 1]) * ((pt[:, groups == g] / mt[:, g:g + 1]).log()
                  - (ps[:, groups == g] / ms[:, g:g + 1]).log())).sum(1) for g in range(k))
    return T * T * (a * (r * (r.log() - ms.log())).sum(1) + b / k * within)


@pytest.mark.parametrize("groups", [[0, 0, 0, 0, 1, 1, 2, 2, 2, 2], [2, 0, 1, 0, 2, 2, 1, 0, 2, 0], [1, 0, 1, 0, 0]])
def test_terms_and_their_gradients_equal_autograd_of_the_composite_form(groups):
    # Groups contiguous and in order, shuffled with unequal sizes (gathered, padded to the largest), two groups.
    c = len(groups)
    s, t, y = _logits(24, c, seed=13 + c)
    w = torch.randn(24, dtype=torch.float64)  # a weighted sum, so that the incoming gradient is not uniform
    shares = [0.5, 0.3, 0.2][:max(groups) + 1]
    shares = [v / sum(shares) for v in shares]
    for term, ref in [(lambda x: gd.decoupled_distillation(x, t, y, 2.0, 0.7, 3.0),
                       lambda x: _dkd_autograd(x, t, y, 2.0, 0.7, 3.0)),
                      (lambda x: gd.long_tail_distillation(x, t, torch.tensor(groups), shares, 2.0, 0.7, 1.5),
                       lambda x: _ltkd_autograd(x, t, torch.tensor(groups), shares, 2.0, 0.7, 1.5))]:
        x = s.clone().requires_grad_()
        got = term(x)
        (g_got,) = torch.autograd.grad((w * got).sum(), x)
        x = s.clone().requires_grad_()
        want = ref(x)
        (g_want,) = torch.autograd.grad((w * want).sum(), x)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


def test_the_objectives_terms_carry_the_warmup_and_temperature_in_their_gradient():
    # DistillTerm applies T^2 and DKD's warm-up factor inside the Functions: check value and gradient.
    s, t, y = _logits(16, 10, seed=14)
    prior = torch.arange(10, 0, -1, dtype=torch.float64) / 55
    groups = gd.class_groups_by_count(prior)
    # The term keeps the prior in float32 (its group shares are summed from it).
    shares = torch.stack([prior.float()[groups == g].sum() for g in range(3)]).double()
    shares = (shares / shares.sum()).tolist()
    dkd = DistillTerm("dkd", 3.0, dkd_warmup=4)
    dkd.epoch = 1
    ltkd = DistillTerm("ltkd", 3.0, prior)
    for term, ref in [(dkd, lambda x: 0.5 * _dkd_autograd(x, t, y, 3.0, 1.0, 8.0)),
                      (ltkd, lambda x: _ltkd_autograd(x, t, groups, shares, 3.0, 1.0, 3.0))]:
        x = s.clone().requires_grad_()
        got = term(x, t, y)
        (g_got,) = torch.autograd.grad(got.sum(), x)
        x = s.clone().requires_grad_()
        want = ref(x)
        (g_want,) = torch.autograd.grad(want.sum(), x)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


# ---- mixed precision -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda s, t, y: gd.decoupled_distillation(s, t, y),
    lambda s, t, y: gd.long_tail_distillation(s, t, gd.class_groups_by_count(torch.arange(10, 0, -1)),
                                              [0.6, 0.2, 0.2]),
    lambda s, t, y: DistillTerm("ltkd", 4.0, torch.arange(10, 0, -1) / 55)(s, t, y),
])
def test_bf16_logits_give_float32_values_and_finite_gradients(make):
    torch.manual_seed(0)
    w = torch.randn(8, 10, requires_grad=True)
    x, t, y = torch.randn(32, 8), torch.randn(32, 10).bfloat16(), torch.randint(0, 10, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = x @ w
        assert s.dtype == torch.bfloat16
        out = make(s, t, y)
    assert out.dtype == torch.float32 and out.shape == (32,)
    # Computed in float32 under autocast: the same as from the float32 copies of the same logits.
    torch.testing.assert_close(out, make(s.detach().float(), t.float(), y), rtol=1e-5, atol=1e-5)
    out.mean().backward()
    assert torch.isfinite(out).all() and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


@pytest.mark.parametrize("name,opts", [("dkd", {"dkd_warmup": 0}), ("ltkd", {}),
                                       ("groupdistil", {"kd_term": "ltkd"}), ("class-robust-kd", {"kd_term": "dkd"})])
def test_objectives_under_bf16_autocast(name, opts):
    torch.manual_seed(1)
    prior = torch.arange(10, 0, -1) / 55
    obj = gd.build_objective(name, n_groups=3, n_classes=10, class_prior=prior, group_counts=[5.0, 3, 2], **opts)
    w = torch.randn(8, 10, requires_grad=True)
    x, t, y = torch.randn(32, 8), torch.randn(32, 10), torch.randint(0, 10, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj(x @ w, y, torch.randint(0, 3, (32,)), t.bfloat16())
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    assert torch.isfinite(w.grad).all()


# ---- the robust aggregations over the chosen term -------------------------------------------------


@pytest.mark.parametrize("kd_term", ["kd", "dkd", "ltkd"])
def test_robust_aggregations_act_on_the_chosen_term(kd_term):
    prior = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    s, t, y = _logits(40, 5, seed=11, dtype=torch.float32)
    term = DistillTerm(kd_term, 2.0, prior, **({"dkd_warmup": 0} if kd_term == "dkd" else {}))
    opts = {"kd_term": kd_term, "temperature": 2.0, "alpha": 0.3, **({"dkd_warmup": 0} if kd_term == "dkd" else {})}
    want = (0.7 * gd.cross_entropy(s, y) + 0.3 * term(s, t, y)).mean()
    # One data group (q = 1): GroupDistil's loss is the plain mean of its per-sample mix.
    gdl = gd.build_objective("groupdistil", n_groups=1, class_prior=prior, **opts)
    torch.testing.assert_close(gdl(s, y, torch.zeros(40, dtype=torch.long), t).loss, want)
    # class-robust-kd, standard mode (w = pi): the plain mean too (for kd: up to the teacher's
    # entropy, its soft cross-entropy form).
    crkd = gd.build_objective("class-robust-kd", n_classes=5, class_prior=prior, mode="standard", **opts)
    got = crkd(s, y, None, t).loss
    if kd_term == "kd":
        p = torch.softmax(t / 2.0, dim=1)
        want = want - 0.3 * 4.0 * (p * p.log()).sum(1).mean()
    torch.testing.assert_close(got, want)
    # robust mode moves lambda from the per-class risks of the chosen term.
    rob = gd.build_objective("class-robust-kd", n_classes=5, class_prior=prior, step_size=1.0, **opts)
    rob(s, y, None, t)
    assert not torch.allclose(rob.lam.q, torch.full((5,), 0.2))


@pytest.mark.parametrize("name,kd_term", [("groupdistil", "dkd"), ("groupdistil", "ltkd"),
                                          ("class-robust-kd", "dkd"), ("class-robust-kd", "ltkd")])
def test_gradcheck_of_the_robust_aggregations_over_a_term(name, kd_term):
    prior = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    obj = gd.build_objective(name, n_groups=3, n_classes=5, class_prior=prior, kd_term=kd_term).eval()
    s, t, y = _logits(6, 5, seed=12, scale=1.0)
    g = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.autograd.gradcheck(lambda x: obj(x, y, g, t).loss, (s.requires_grad_(),))


def test_term_options_are_checked():
    with pytest.raises(ValueError, match="dkd_beta: applies to kd_term dkd, not kd"):
        gd.build_objective("groupdistil", n_groups=2, dkd_beta=2.0)
    with pytest.raises(ValueError, match="ltkd_alpha: applies to kd_term ltkd, not dkd"):
        gd.build_objective("class-robust-kd", n_classes=2, class_prior=[0.5, 0.5], kd_term="dkd", ltkd_alpha=1.0)
    with pytest.raises(ValueError, match="class_prior: kd_term ltkd needs"):
        gd.GroupDistil(2, kd_term="ltkd")
    with pytest.raises(ValueError, match="kd_term: expected one of kd, dkd, ltkd"):
        gd.GroupDistil(2, kd_term="hinton")
    with pytest.raises(ValueError, match="dkd_warmup: expected an integer"):
        gd.DKD(dkd_warmup=1.5)
    with pytest.raises(ValueError, match="dkd_beta: expected a finite number >= 0"):
        gd.DKD(dkd_beta=-1.0)
    with pytest.raises(ValueError, match="DKD needs at least 2 classes"):
        gd.decoupled_distillation(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="DKD needs at least 2 classes"):  # the objective's path too
        gd.DKD()(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), teacher_logits=torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"class_groups: expected ids 0\.\.K-1 with every group non-empty"):
        gd.group_kl_decomposition(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 2, 2]))
    with pytest.raises(ValueError, match="student_logits: expected 3 classes"):
        gd.LTKD([0.5, 0.3, 0.2])(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), teacher_logits=torch.zeros(2, 4))


# ---- command line and YAML (built-in datasets, 1 epoch, mlp-small) ---------------------------------

FAST = ["--model", "mlp-small", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kdterm-teachers")
    out = {}
    for dataset in ("spurious-digits", "digits-lt"):
        assert run_app(["train", "--dataset", dataset, *FAST, "--out", str(root / dataset)]) == 0
        out[dataset] = root / dataset / "checkpoints" / "best.pt"
    return out


@pytest.mark.parametrize("dataset,args,options", [
    ("spurious-digits", ["--method", "dkd", "--dkd-warmup", "2", "--dkd-beta", "4"],
     {"dkd_warmup": 2, "dkd_beta": 4.0}),
    ("spurious-digits", ["--method", "groupdistil", "--kd-term", "ltkd", "--ltkd-beta", "1"],
     {"kd_term": "ltkd", "ltkd_beta": 1.0}),
    ("digits-lt", ["--method", "ltkd"], {}),
])
def test_distill_with_a_term_from_the_command_line(teachers, tmp_path, dataset, args, options):
    out = tmp_path / "run"
    cmd = ["distill", "--dataset", dataset, *FAST, "--teacher", str(teachers[dataset]), *args, "--out", str(out)]
    assert run_app(cmd) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["options"] == options and final["method"] == args[1]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["loss_kd"] > 0  # the term was trained on


def test_class_robust_kd_with_dkd_from_yaml(teachers, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"dataset": "digits-lt"}, "model": {"name": "mlp-small"}, "quiet": True,
        "teacher": {"checkpoints": [str(teachers["digits-lt"])]}, "out": str(tmp_path / "run"),
        "objective": {"method": "class-robust-kd", "kd_term": "dkd", "dkd_warmup": 0, "temperature": 2.0},
        "train": {"epochs": 1}}))
    assert run_app(["run", str(cfg)]) == 0
    final = json.loads((tmp_path / "run/final.json").read_text())
    assert final["options"] == {"kd_term": "dkd", "dkd_warmup": 0, "temperature": 2.0}
    assert len(final["splits"]["test"]["class_acc"]) == 10


@pytest.mark.parametrize("args,message", [
    (["--method", "groupdistil", "--kd-term", "hinton"], "--kd-term"),
    (["--method", "kd", "--kd-term", "dkd"], "--kd-term: does not apply to method kd"),
    (["--method", "groupdistil", "--dkd-beta", "2"], "dkd_beta: applies to kd_term dkd, not kd"),
    (["--method", "dkd", "--dkd-warmup", "-1"], "--dkd-warmup"),
    (["--method", "ltkd", "--ltkd-alpha", "-0.5"], "--ltkd-alpha"),
    (["--method", "ltkd", "--dkd-alpha", "1"], "--dkd-alpha: does not apply to method ltkd"),
])
def test_bad_term_options_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    out = tmp_path / "x"
    cmd = ["distill", "--dataset", "spurious-digits", *FAST, "--teacher", str(tmp_path / "t.pt"), *args,
           "--out", str(out)]
    assert run_app(cmd) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0, err
    assert not out.exists()
