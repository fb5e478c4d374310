"""Shared fixtures: a tiny grouped dataset in memory, so engine tests run in seconds."""

from __future__ import annotations

import pytest
import torch

from groupdistil.data.base import DatasetBundle, GroupedDataset
from groupdistil.groups import Grouping


def make_blobs(seed: int = 0, n: int = 240, spurious: float = 0.9) -> DatasetBundle:
    """Two classes x two attributes of 2-D Gaussian blobs (with a spurious attribute in train).

    The label is weakly encoded in feature 0 and the attribute strongly in feature 1, so ERM leans on
    the attribute; the minority groups are (y=0, a=1) and (y=1, a=0).
    """
    gen = torch.Generator().manual_seed(seed)
    grouping = Grouping.label_attribute(["neg", "pos"], ["a0", "a1"])

    def split(m: int, p_agree: float, name: str) -> GroupedDataset:
        y = torch.randint(0, 2, (m,), generator=gen)
        agree = torch.rand(m, generator=gen) < p_agree
        a = torch.where(agree, y, 1 - y)
        x = torch.randn(m, 4, generator=gen) * 0.8
        x[:, 0] += 1.0 * (2 * y - 1)
        x[:, 1] += 2.0 * (2 * a - 1)
        return GroupedDataset(y, grouping.group_ids(y, a), inputs=x, identity={"name": "blobs", "split": name,
                                                                             "seed": seed})

    splits = {"train": split(n, spurious, "train"), "val": split(n // 2, 0.5, "val"),
              "test": split(n // 2, 0.5, "test")}
    return DatasetBundle("blobs", grouping, (4,), splits)


@pytest.fixture
def blobs() -> DatasetBundle:
    return make_blobs()
