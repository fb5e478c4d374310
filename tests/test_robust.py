"""group_risks and the online group-DRO weights q: values, invariants, the reference trajectory."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import groupdistil as gd


def _batch(batch: int, n_groups: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    losses = 5 * torch.rand(batch, generator=g)
    groups = torch.randint(0, n_groups, (batch,), generator=g)
    return losses, groups


# ---- group_risks -------------------------------------------------------------------------------


def test_group_risks_hard_hand_computed_with_an_absent_group() -> None:
    r = gd.group_risks(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 2, 2]), n_groups=3)
    torch.testing.assert_close(r.sums, torch.tensor([3.0, 0.0, 7.0]))
    torch.testing.assert_close(r.counts, torch.tensor([2.0, 0.0, 2.0]))
    torch.testing.assert_close(r.means, torch.tensor([1.5, 0.0, 3.5]))


def test_group_risks_soft_membership_hand_computed() -> None:
    losses = torch.tensor([2.0, 4.0])
    m = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.0, 0.75]])
    r = gd.group_risks(losses, membership=m)
    torch.testing.assert_close(r.sums, torch.tensor([2.0, 1.0, 3.0]))
    torch.testing.assert_close(r.counts, torch.tensor([0.75, 0.5, 0.75]))
    torch.testing.assert_close(r.means, torch.tensor([2.0 / 0.75, 2.0, 4.0]))


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 40), n_groups=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_group_risks_hard_equals_one_hot_membership(batch: int, n_groups: int, seed: int) -> None:
    losses, groups = _batch(batch, n_groups, seed)
    hard = gd.group_risks(losses, groups, n_groups)
    soft = gd.group_risks(losses, membership=torch.nn.functional.one_hot(groups, n_groups).float())
    for a, b in zip(hard, soft, strict=True):
        torch.testing.assert_close(a, b)
    assert hard.counts.sum().item() == batch
    torch.testing.assert_close(hard.sums.sum(), losses.sum())


def test_group_risks_hard_scales_to_many_groups() -> None:
    # A dense B x G one-hot here would need 16 GB; index_add_/bincount need O(B + G).
    n_groups, batch = 2_000_000, 2_000
    losses, groups = torch.ones(batch), torch.arange(batch) * 1000
    r = gd.group_risks(losses, groups, n_groups)
    assert r.sums.shape == (n_groups,)
    assert r.counts.sum().item() == batch and r.means[groups].eq(1.0).all()


def test_group_risks_accumulates_half_in_float32() -> None:
    losses = torch.full((3000,), 1.001, dtype=torch.float16)
    r = gd.group_risks(losses, torch.zeros(3000, dtype=torch.long), 1)
    assert r.sums.dtype == torch.float32
    # A float16 sum of 3000 values near 1 would be off by ~1; float32 is exact to ~1e-3.
    torch.testing.assert_close(r.sums, torch.tensor([3000 * float(losses[0])]), rtol=1e-6, atol=1e-2)


def test_group_risks_bad_input() -> None:
    losses = torch.ones(3)
    with pytest.raises(ValueError, match=r"groups: expected ids in \[0, 2\), got values in \[0, 2\]"):
        gd.group_risks(losses, torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match=r"groups: expected ids in \[0, 2\), got values in \[-1, 1\]"):
        gd.group_risks(losses, torch.tensor([0, 1, -1]), 2)
    with pytest.raises(ValueError, match=r"groups: expected a \(3,\) integer tensor, got shape \(2,\)"):
        gd.group_risks(losses, torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match=r"losses: expected a \(B,\) tensor, got shape \(3, 1\)"):
        gd.group_risks(losses[:, None], torch.tensor([0, 1, 1]), 2)
    with pytest.raises(ValueError, match=r"n_groups: expected an integer >= 1, got 0"):
        gd.group_risks(losses, torch.tensor([0, 0, 0]), 0)
    with pytest.raises(ValueError, match=r"membership: expected a \(3, G\) tensor, got \(2, 2\)"):
        gd.group_risks(losses, membership=torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"membership: expected non-negative weights, got min -1"):
        gd.group_risks(losses, membership=-torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"exactly one of groups"):
        gd.group_risks(losses)


# ---- GroupDRO: single steps by hand ------------------------------------------------------------


def test_one_step_hand_computed_uses_updated_q() -> None:
    dro = gd.GroupDRO(2, step_size=0.5)
    loss = dro(torch.tensor([1.0, 1.0, 3.0]), torch.tensor([0, 0, 1]))
    q = torch.tensor([math.exp(0.5), math.exp(1.5)])
    q = q / q.sum()
    torch.testing.assert_close(dro.q, q)
    torch.testing.assert_close(loss, q[0] * 1.0 + q[1] * 3.0)


def test_eval_mode_leaves_q_unchanged() -> None:
    dro = gd.GroupDRO(3, step_size=1.0).eval()
    loss = dro(torch.tensor([1.0, 6.0]), torch.tensor([0, 1]))
    torch.testing.assert_close(dro.q, torch.full((3,), 1 / 3))
    torch.testing.assert_close(loss, torch.tensor(7.0 / 3))


def test_adjustment_per_group_and_not_in_the_loss() -> None:
    # C = [0, 2] and n = [4, 16]: a = L + [0, 0.5]. The reference code would skip the whole
    # adjustment because one C_g is 0; METHODS.md applies it group by group.
    dro = gd.GroupDRO(2, step_size=1.0, group_counts=[4, 16], adjustment=[0.0, 2.0])
    loss = dro(torch.tensor([1.0, 1.0]), torch.tensor([0, 1]))
    q = torch.tensor([math.exp(1.0), math.exp(1.5)])
    q = q / q.sum()
    torch.testing.assert_close(dro.q, q)
    torch.testing.assert_close(loss, q.sum() * 1.0)  # L_g only, without the bonus


def test_absent_groups_move_only_by_their_adjustment() -> None:
    dro = gd.GroupDRO(3, step_size=0.3, group_counts=[1, 4, 9], adjustment=[3.0, 3.0, 0.0])
    before = dro.q.clone()
    dro(torch.tensor([2.0]), torch.tensor([2]))  # only group 2 in the batch
    # Group 0: a = 3/1; group 1: a = 3/2; group 2: a = 2 (its loss, no adjustment).
    ratio = (dro.q / before) / (dro.q[2] / before[2])
    expected = torch.exp(0.3 * (torch.tensor([3.0, 1.5, 2.0]) - 2.0))
    torch.testing.assert_close(ratio, expected)


def test_normalize_loss_hand_computed() -> None:
    dro = gd.GroupDRO(2, step_size=2.0, group_counts=[1, 4], adjustment=1.0, normalize_loss=True)
    dro(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]))
    a = torch.tensor([1.0 + 1.0, 3.0 + 0.5])
    a = a / a.sum()
    q = torch.exp(2.0 * a)
    torch.testing.assert_close(dro.q, q / q.sum())


def test_zero_count_groups_keep_weight_zero_even_when_seen() -> None:
    dro = gd.GroupDRO(3, step_size=1.0, group_counts=[5, 0, 5])
    torch.testing.assert_close(dro.q, torch.tensor([0.5, 0.0, 0.5]))
    for _ in range(5):
        loss = dro(torch.tensor([1.0, 50.0, 1.0]), torch.tensor([0, 1, 2]))
    assert dro.q[1].item() == 0.0
    torch.testing.assert_close(loss, torch.tensor(1.0))


def test_huge_losses_do_not_overflow() -> None:
    dro = gd.GroupDRO(2, step_size=1.0)
    dro(torch.tensor([1e4, 0.0]), torch.tensor([0, 1]))  # exp(1e4) overflows float32 and float64
    assert torch.isfinite(dro.q).all()
    torch.testing.assert_close(dro.q, torch.tensor([1.0, 0.0]))


def test_step_size_zero_keeps_q_fixed() -> None:
    dro = gd.GroupDRO(3, step_size=0.0, group_counts=[2, 2, 1])
    for seed in range(3):
        dro(*_batch(10, 3, seed))
    torch.testing.assert_close(dro.q, torch.full((3,), 1 / 3))


def test_single_group_and_single_sample() -> None:
    dro = gd.GroupDRO(1, step_size=1.0)
    loss = dro(torch.tensor([2.5]), torch.tensor([0]))
    assert dro.q.tolist() == [1.0]
    torch.testing.assert_close(loss, torch.tensor(2.5))
    dro3 = gd.GroupDRO(3, step_size=1.0)
    loss3 = dro3(torch.tensor([3.0]), torch.tensor([1]))
    assert dro3.q.argmax().item() == 1
    torch.testing.assert_close(loss3, dro3.q[1] * 3.0)


def test_gradient_is_q_over_count_and_gradcheck_float64() -> None:
    losses, groups = _batch(8, 3, 1)
    losses = losses.double().requires_grad_()
    dro = gd.GroupDRO(3, step_size=0.2)
    dro(losses, groups).backward()
    counts = torch.bincount(groups, minlength=3).double()
    torch.testing.assert_close(losses.grad, (dro.q.double() / counts)[groups])
    # In eval mode the map losses -> loss is fixed, so gradcheck sees a function (float64 throughout).
    dro.eval()
    x0 = losses.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: dro(x, groups), (x0,))
    m = torch.softmax(torch.randn(8, 3, dtype=torch.float64), dim=1)
    assert torch.autograd.gradcheck(lambda x: dro(x, membership=m), (x0,))


def test_half_losses_give_float32_loss_and_q() -> None:
    losses, groups = _batch(12, 3, 2)
    dro = gd.GroupDRO(3, step_size=0.5)
    loss = dro(losses.half(), groups)
    ref = gd.GroupDRO(3, step_size=0.5)
    ref_loss = ref(losses.half().float(), groups)
    assert loss.dtype == torch.float32 and dro.q.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(dro.q, ref.q)


def test_state_dict_round_trips_q_and_the_trajectory_continues() -> None:
    a = gd.GroupDRO(4, step_size=0.3, group_counts=[3, 1, 2, 6], adjustment=0.5)
    for seed in range(4):
        a(*_batch(16, 4, seed))
    b = gd.GroupDRO(4, step_size=0.3, group_counts=[3, 1, 2, 6], adjustment=0.5)
    assert not torch.equal(a.q, b.q)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.q, b.q)
    batch = _batch(16, 4, 99)
    torch.testing.assert_close(a(*batch), b(*batch))
    assert torch.equal(a.q, b.q)


def test_loaded_adjustment_and_counts_take_effect_in_the_next_update() -> None:
    # The bonus C / sqrt(n) is precomputed from buffers; a state_dict with other buffers must
    # refresh it, or the loaded module would keep stepping with its constructor's adjustment.
    a = gd.GroupDRO(3, step_size=0.5, group_counts=[1, 4, 9], adjustment=[2.0, 0.0, 1.0])
    b = gd.GroupDRO(3, step_size=0.5, group_counts=[1, 1, 1])
    b.load_state_dict(a.state_dict())
    batch = _batch(12, 3, 7)
    torch.testing.assert_close(b(*batch), a(*batch))
    torch.testing.assert_close(b.q, a.q)
    # And back: loading an unadjusted state removes the bonus.
    c = gd.GroupDRO(3, step_size=0.5, group_counts=[1, 1, 1])
    a.load_state_dict(c.state_dict())
    torch.testing.assert_close(a(*batch), c(*batch))
    torch.testing.assert_close(a.q, c.q)


# ---- invariants --------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    n_groups=st.integers(1, 6),
    steps=st.integers(1, 8),
    eta=st.floats(0.0, 5.0),
    seed=st.integers(0, 10_000),
    normalize=st.booleans(),
)
def test_q_stays_on_the_simplex(n_groups: int, steps: int, eta: float, seed: int, normalize: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 4, (n_groups,), generator=g).float()
    counts[0] = 1.0
    dro = gd.GroupDRO(n_groups, step_size=eta, group_counts=counts, adjustment=1.0, normalize_loss=normalize)
    for k in range(steps):
        dro(*_batch(10, n_groups, seed + k))
        assert (dro.q >= 0).all()
        torch.testing.assert_close(dro.q.sum(), torch.tensor(1.0))
        assert (dro.q[counts == 0] == 0).all()


@settings(max_examples=30, deadline=None)
@given(n_groups=st.integers(2, 6), seed=st.integers(0, 10_000), normalize=st.booleans())
def test_q_is_equivariant_under_relabelling(n_groups: int, seed: int, normalize: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_groups, generator=g)  # old group k becomes perm[k]
    counts = torch.randint(1, 20, (n_groups,), generator=g).float()
    adj = torch.rand(n_groups, generator=g)
    permuted_counts, permuted_adj = torch.empty_like(counts), torch.empty_like(adj)
    permuted_counts[perm], permuted_adj[perm] = counts, adj
    kwargs = {"step_size": 0.7, "normalize_loss": normalize}
    a = gd.GroupDRO(n_groups, group_counts=counts, adjustment=adj, **kwargs)
    b = gd.GroupDRO(n_groups, group_counts=permuted_counts, adjustment=permuted_adj, **kwargs)
    for k in range(5):
        losses, groups = _batch(12, n_groups, seed + k)
        torch.testing.assert_close(a(losses, groups), b(losses, perm[groups]))
    torch.testing.assert_close(b.q[perm], a.q)


# ---- the reference update, written out in plain Python -----------------------------------------


def _reference_trajectory(
    batches: list[tuple[list[float], list[int]]],
    n_groups: int,
    eta: float,
    counts: list[float],
    adjustment: list[float],
    normalize: bool,
) -> tuple[list[float], list[float]]:
    """Group DRO as in Sagawa et al.'s code: q * exp(eta * a), normalised; loss with the updated q."""
    q = [1.0 / n_groups] * n_groups
    losses_out = []
    for losses, groups in batches:
        sums, seen = [0.0] * n_groups, [0] * n_groups
        for loss, group in zip(losses, groups, strict=True):
            sums[group] += loss
            seen[group] += 1
        means = [s / c if c else 0.0 for s, c in zip(sums, seen, strict=True)]
        bonus = [c / math.sqrt(n) if c > 0 else 0.0 for c, n in zip(adjustment, counts, strict=True)]
        a = [m + b for m, b in zip(means, bonus, strict=True)]
        if normalize:
            total = sum(a)
            a = [x / total for x in a]
        q = [w * math.exp(eta * x) for w, x in zip(q, a, strict=True)]
        z = sum(q)
        q = [w / z for w in q]
        losses_out.append(sum(w * m for w, m in zip(q, means, strict=True)))
    return q, losses_out


@pytest.mark.parametrize(
    ("adjustment", "normalize", "eta"),
    [([0.0] * 4, False, 0.05), ([1.0, 0.0, 2.0, 0.5], False, 0.05), ([1.0] * 4, True, 1.0)],
)
def test_fifty_step_trajectory_matches_plain_loop(
    adjustment: list[float], normalize: bool, eta: float
) -> None:
    n_groups, counts = 4, [40.0, 10.0, 5.0, 1.0]
    # Group 3 is rare: often absent from a batch of 6.
    batches = []
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        groups = torch.multinomial(torch.tensor(counts), 6, replacement=True, generator=g)
        losses = 3 * torch.rand(6, generator=g) * (1 + groups.float())
        batches.append((losses.tolist(), groups.tolist()))
    ref_q, ref_losses = _reference_trajectory(batches, n_groups, eta, counts, adjustment, normalize)

    dro = gd.GroupDRO(
        n_groups, step_size=eta, group_counts=counts, adjustment=adjustment, normalize_loss=normalize
    )
    for (losses, groups), ref_loss in zip(batches, ref_losses, strict=True):
        loss = dro(torch.tensor(losses), torch.tensor(groups))
        assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    torch.testing.assert_close(dro.q, torch.tensor(ref_q, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    assert max(ref_q) > 0.4  # the trajectory went somewhere: q is far from uniform


def _fifty_batches(counts: list[float], dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(50):
        groups = torch.multinomial(torch.tensor(counts), 6, replacement=True, generator=g)
        out.append(((3 * torch.rand(6, generator=g) * (1 + groups.float())).to(dtype), groups))
    return out


def test_float64_trajectory_matches_plain_loop_to_float64_precision() -> None:
    # C / sqrt(n) with sqrt(40) etc. is not exact in float32: after .double() the bonus must be
    # recomputed in float64, or q drifts ~4e-7 from the float64 reference in 50 steps at eta 1.
    counts, adjustment = [40.0, 10.0, 5.0, 1.0], [1.0, 0.0, 2.0, 0.5]
    batches = _fifty_batches(counts, torch.float64)
    ref_q, ref_losses = _reference_trajectory(
        [(x.tolist(), y.tolist()) for x, y in batches], 4, 1.0, counts, adjustment, False
    )
    dro = gd.GroupDRO(4, step_size=1.0, group_counts=counts, adjustment=adjustment).double()
    assert dro.bonus is not None and dro.bonus.dtype == torch.float64
    for (losses, groups), ref_loss in zip(batches, ref_losses, strict=True):
        assert dro(losses, groups).item() == pytest.approx(ref_loss, rel=1e-12)
    assert dro.q.dtype == torch.float64
    torch.testing.assert_close(dro.q, torch.tensor(ref_q, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert max(ref_q) > 0.4


def test_half_module_keeps_q_and_counts_float32_and_tiny_weights_alive() -> None:
    dro = gd.GroupDRO(2, step_size=1.0, group_counts=[70000.0, 3.0], adjustment=1.0).half()
    assert dro.q.dtype == dro.group_counts.dtype == dro.adjustment.dtype == torch.float32
    assert dro.group_counts[0].item() == 70000.0  # float16 would make it inf
    groups = torch.tensor([0, 1])
    dro(torch.tensor([20.0, 0.0], dtype=torch.float16), groups)
    tiny = dro.q[1].item()
    assert 0.0 < tiny < 6e-8  # below float16's smallest subnormal: float16 q would hold 0 here
    assert dro.q.dtype == torch.float32
    # The group is not lost: when its loss becomes the larger one, its weight comes back.
    for _ in range(3):
        dro(torch.tensor([0.0, 20.0], dtype=torch.float16), groups)
    assert dro.q[1].item() > 0.5


# ---- bad input ---------------------------------------------------------------------------------


def test_group_dro_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"step_size: expected a finite number >= 0, got -0.1"):
        gd.GroupDRO(2, step_size=-0.1)
    with pytest.raises(ValueError, match=r"n_groups: expected an integer >= 1, got 0"):
        gd.GroupDRO(0)
    with pytest.raises(ValueError, match=r"adjustment: expected values >= 0, got \[-1.0, -1.0\]"):
        gd.GroupDRO(2, group_counts=[1, 1], adjustment=-1.0)
    with pytest.raises(ValueError, match=r"adjustment: needs group_counts"):
        gd.GroupDRO(2, adjustment=1.0)
    with pytest.raises(ValueError, match=r"adjustment: expected a scalar or 2 values, got 3 values"):
        gd.GroupDRO(2, group_counts=[1, 1], adjustment=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"group_counts: expected non-negative counts .* got \[-1.0, 2.0\]"):
        gd.GroupDRO(2, group_counts=[-1, 2])
    with pytest.raises(ValueError, match=r"group_counts: expected a scalar or 2 values, got 3 values"):
        gd.GroupDRO(2, group_counts=[1, 2, 3])
    dro = gd.GroupDRO(2)
    with pytest.raises(ValueError, match=r"groups: expected ids in \[0, 2\), got values in \[0, 5\]"):
        dro(torch.ones(2), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"means: expected a \(2,\) tensor, got shape \(3,\)"):
        dro.update(torch.ones(3))
