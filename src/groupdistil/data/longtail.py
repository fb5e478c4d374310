"""Long-tailed views of any dataset's training split (`data.imbalance_ratio`).

The rule of the CIFAR-LT readers (:func:`~groupdistil.data._splits.long_tail_index`): class k, in the
dataset's class order, keeps floor(n_max * R^(-k / (C - 1))) of its training items, n_max being the
largest class's count, so n_max / n_min = R. Which items are kept is fixed by `data.data_seed`: each
class's items are shuffled by a generator of their own (not the one a reader used for its splits)
and the first ones kept. Val and test are untouched, so evaluation stays what it was.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from groupdistil.data._splits import long_tail_index
from groupdistil.data.base import DatasetBundle, GroupedDataset, Loader

#: Mixed into the data seed so that the kept items do not follow the reader's own split shuffles.
STREAM = 0x4C54  # "LT"


class _Subset:
    """Loader of items ``index`` of another loader; keeps ``name`` (for messages) and ``reads_files``."""

    def __init__(self, loader: Loader, index: np.ndarray) -> None:
        self.loader, self.index = loader, index
        self.reads_files = getattr(loader, "reads_files", False)

    def __call__(self, i: int) -> torch.Tensor:
        return self.loader(int(self.index[i]))

    def name(self, i: int) -> str:
        name = getattr(self.loader, "name", None)
        return name(int(self.index[i])) if name else f"sample {int(self.index[i])}"

    def __repr__(self) -> str:
        return f"Subset({self.loader!r}, n={len(self.index)})"


def subset(ds: GroupedDataset, index: np.ndarray, **identity: object) -> GroupedDataset:
    """Items ``index`` (ascending int64) of a split, with the same transforms and extra identity."""
    t = torch.from_numpy(index)
    loader = None
    if ds.loader is not None:
        sub = getattr(ds.loader, "subset", None)
        loader = sub(index) if sub is not None else _Subset(ds.loader, index)
    return GroupedDataset(
        ds.y[t], ds.g[t], inputs=ds.inputs[t] if ds.inputs is not None else None, loader=loader,
        transform=ds.transform, augmentation=ds.augmentation, identity={**ds.identity, **identity},
    )


def long_tail_view(bundle: DatasetBundle, ratio: float, seed: int) -> DatasetBundle:
    """The bundle with its training split cut to the long-tailed profile of ``ratio`` (see the module)."""
    y = bundle.train.y.numpy()
    n_max = int(np.bincount(y, minlength=bundle.n_classes).max()) if y.size else 0
    rng = np.random.default_rng([seed, STREAM])
    keep, warnings = long_tail_index(y, bundle.n_classes, n_max, ratio, rng)
    # The seed joins the identity: two seeds keep different items with identical labels, and the
    # teacher-logit cache must tell them apart.
    train = subset(bundle.train, keep, imbalance_ratio=ratio, imbalance_seed=seed)
    return dataclasses.replace(
        bundle, splits={**bundle.splits, "train": train},
        warnings=[*bundle.warnings, *(f"{bundle.name}: {w}" for w in warnings)],
    )
