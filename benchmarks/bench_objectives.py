"""Objective alone, forward + backward, B = 512: GroupDistil and ClassRobustKD over KD, and the dense
one-hot aggregation of the reference code beside our index_add one; the DKD and LTKD objectives
(``ce + term``) over KD, timed side by side in one interleaved run."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from groupdistil import DKD, KD, LTKD, ClassRobustKD, GroupDistil
from groupdistil.losses import cross_entropy, distillation
from groupdistil.robust import GroupDRO

CASES = [((10, 4), 1.5), ((100, 100), 1.25), ((1000, 1000), 1.15)]
#: Issue 22's targets for the distillation terms, at C = 100 and 1000.
TERM_CLASSES = (100, 1000)
TERM_TARGETS = {"dkd": 1.3, "ltkd": 1.5, "ltkd_shuffled": 1.5}
B = 512


def _dense_groupdistil(dro: GroupDRO, s, y, g, t, n_groups: int):
    # The reference code's way: a (B, G) one-hot matrix, then matrix products.
    loss = 0.5 * cross_entropy(s, y) + 0.5 * distillation(s, t, 4.0)
    onehot = F.one_hot(g, n_groups).float()
    sums, counts = onehot.t() @ loss, onehot.sum(0)
    return dro.robust_loss(sums, counts)[0]


def _case(c: int, g_count: int, target: float, repeats: int, timer) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(B, c, generator=gen).requires_grad_()
    t = torch.randn(B, c, generator=gen)
    y = torch.randint(0, c, (B,), generator=gen)
    g = torch.randint(0, g_count, (B,), generator=gen)
    kd, gd = KD(0.5, 4.0), GroupDistil(g_count, 0.5, 4.0)
    crkd = ClassRobustKD(c, torch.full((c,), 1.0 / c), 0.5, 4.0)
    dense_dro = GroupDRO(g_count)

    def step(fn):
        def go():
            s.grad = None
            fn().backward()
        return go

    med = timer({
        "kd": step(lambda: kd(s, y, g, t).loss),
        "groupdistil": step(lambda: gd(s, y, g, t).loss),
        "class_robust_kd": step(lambda: crkd(s, y, g, t).loss),
        "groupdistil_dense": step(lambda: _dense_groupdistil(dense_dro, s, y, g, t, g_count)),
    }, repeats=repeats)
    return {
        "case": f"C={c}, G={g_count}", "kd_ms": 1e3 * med["kd"], "target": target,
        "groupdistil_over_kd": med["groupdistil"] / med["kd"],
        "class_robust_kd_over_kd": med["class_robust_kd"] / med["kd"],
        "dense_groupdistil_over_kd": med["groupdistil_dense"] / med["kd"],
    }


def _step(s: torch.Tensor, fn):
    def go():
        s.grad = None
        fn().backward()
    return go


def _terms_case(c: int, repeats: int, timer) -> list[dict[str, Any]]:
    """KD, DKD and LTKD objectives in one interleaved run, one row per term, each with its own target.
    LTKD's class prior is long-tailed from class 0 down (its groups are contiguous column ranges, as in
    CIFAR-LT's numbering) and, for ``ltkd_shuffled``, the same prior over shuffled class ids (its groups
    are gathered columns)."""
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(B, c, generator=gen).requires_grad_()
    t = torch.randn(B, c, generator=gen)
    y = torch.randint(0, c, (B,), generator=gen)
    prior = 0.99 ** torch.arange(c, dtype=torch.float32)
    prior = prior / prior.sum()
    shuffled = prior[torch.randperm(c, generator=gen)]
    objectives = {"kd": KD(0.5, 4.0), "dkd": DKD(4.0), "ltkd": LTKD(prior, 4.0), "ltkd_shuffled": LTKD(shuffled, 4.0)}
    med = timer({name: _step(s, lambda o=o: o(s, y, None, t).loss) for name, o in objectives.items()},
                repeats=repeats)
    return [{"case": f"C={c}, {term}", "kd_ms": 1e3 * med["kd"], "target": target,
             f"{term}_over_kd": med[term] / med["kd"]} for term, target in TERM_TARGETS.items()]


def run(repeats: int, timer) -> list[dict[str, Any]]:
    # A sample here takes milliseconds: three times the usual repeats cost seconds and steady the
    # medians, whose run-to-run spread on a shared 2-core machine is otherwise about the size of the
    # effect being measured.
    rows = [_case(c, g_count, target, 3 * repeats, timer) for (c, g_count), target in CASES]
    return rows + [row for c in TERM_CLASSES for row in _terms_case(c, 3 * repeats, timer)]
