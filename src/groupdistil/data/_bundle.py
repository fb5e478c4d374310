"""Assemble a :class:`DatasetBundle` from per-split arrays; shared by every reader."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from groupdistil.data.base import SPLITS, DatasetBundle, GroupedDataset, Loader
from groupdistil.data.images import ArrayImages, ImageFiles
from groupdistil.groups import Grouping

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SplitData:
    """One split before wrapping: (N,) labels and groups, and in-memory inputs or a lazy loader."""

    y: torch.Tensor
    g: torch.Tensor
    inputs: torch.Tensor | None = None
    loader: Loader | None = None


def make_bundle(
    name: str,
    grouping: Grouping,
    input_shape: Sequence[int],
    parts: Mapping[str, SplitData],
    *,
    identity: Mapping[str, Any],
    transform: Transform | None = None,
    augmentation: Transform | None = None,
    published_counts: Mapping[str, Sequence[int]] | None = None,
    warnings: Sequence[str] = (),
) -> DatasetBundle:
    """Wrap train/val/test parts as :class:`GroupedDataset` (augmentation on train only).

    Group counts that differ from ``published_counts`` become warnings, never errors: users often
    hold a slightly different copy of a public dataset and should still be able to train on it.
    """
    splits = {
        split: GroupedDataset(
            parts[split].y,
            parts[split].g,
            inputs=parts[split].inputs,
            loader=parts[split].loader,
            transform=transform,
            augmentation=augmentation if split == "train" else None,
            identity={**identity, "dataset": name, "split": split},
        )
        for split in SPLITS
    }
    bundle = DatasetBundle(
        name=name,
        grouping=grouping,
        input_shape=tuple(int(s) for s in input_shape),
        splits=splits,
        published_counts={k: list(v) for k, v in (published_counts or {}).items()},
        warnings=list(warnings),
    )
    for split, expected in bundle.published_counts.items():
        found = bundle.group_counts(split).tolist()
        if found != list(expected):
            bundle.warnings.append(
                f"{name}: {split} group counts {'/'.join(map(str, found))} differ from the published "
                f"{'/'.join(map(str, expected))} ({', '.join(grouping.group_names)})"
            )
    for split in SPLITS:
        if len(splits[split]) == 0:
            bundle.warnings.append(f"{name}: the {split} split is empty")
    return bundle


def parts_by_split(
    split: np.ndarray,
    y: np.ndarray,
    g: np.ndarray | torch.Tensor,
    *,
    loader: ImageFiles | ArrayImages | None = None,
    inputs: torch.Tensor | None = None,
) -> dict[str, SplitData]:
    """Cut (N,) arrays into train/val/test by ``split`` codes (0, 1, 2 = SPLITS order)."""
    g = torch.as_tensor(g).long()
    y_t = torch.as_tensor(y).long()
    parts = {}
    for code, name in enumerate(SPLITS):
        ix = np.flatnonzero(split == code)
        t = torch.from_numpy(ix)
        parts[name] = SplitData(
            y_t[t],
            g[t],
            inputs=inputs[t] if inputs is not None else None,
            loader=loader.subset(ix) if loader is not None else None,
        )
    return parts
