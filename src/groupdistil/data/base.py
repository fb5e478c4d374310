"""The dataset contract: splits whose items are ``(x, y, g, index)``, and the bundle of three splits.

Small datasets keep ``x`` as one in-memory tensor; image datasets keep paths and decode lazily.
Labels and groups are always in memory, so counts never decode an image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from groupdistil.errors import DataError
from groupdistil.groups import Grouping

SPLITS = ("train", "val", "test")

#: Turns the stored input of sample i into a tensor; ``describe()`` names it for fingerprints.
Loader = Callable[[int], torch.Tensor]


class GroupedDataset(Dataset):
    """One split. ``ds[i] -> (x, y, g, i)`` with x a float tensor, y and g ints.

    Args:
        y: (N,) int64 labels. g: (N,) int64 group ids.
        loader: maps an index to the raw input tensor (e.g. decode image i), or None when
            ``inputs`` holds everything.
        inputs: (N, ...) float tensor of all inputs (in-memory datasets).
        transform: deterministic transform applied to every input (resize, normalise).
        augmentation: random transform applied after ``transform`` (training only), or None.
        identity: JSON-able description of where the data came from (dataset name, options, split),
            used with the transforms' reprs to fingerprint the data for the teacher-logit cache.
    """

    def __init__(
        self,
        y: torch.Tensor,
        g: torch.Tensor,
        *,
        inputs: torch.Tensor | None = None,
        loader: Loader | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        identity: dict[str, Any] | None = None,
    ) -> None:
        if (inputs is None) == (loader is None):
            raise ValueError("GroupedDataset: pass exactly one of inputs or loader")
        if y.shape != g.shape or y.dim() != 1:
            raise ValueError(f"y and g: expected equal (N,) shapes, got {tuple(y.shape)}, {tuple(g.shape)}")
        if inputs is not None and inputs.shape[0] != y.shape[0]:
            raise ValueError(f"inputs: expected {y.shape[0]} rows, got {inputs.shape[0]}")
        self.y = y.long()
        self.g = g.long()
        self.inputs = inputs
        self.loader = loader
        self.transform = transform
        self.augmentation = augmentation
        self.identity = dict(identity or {})

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, int]:
        x = self.inputs[i] if self.inputs is not None else self.loader(i)  # type: ignore[misc]
        if self.transform is not None:
            try:
                x = self.transform(x)
            except DataError as e:  # a transform's refusal (too many pixels after a resize): name the input
                name = getattr(self.loader, "name", None)
                raise DataError(f"{name(i) if name else f'sample {i}'}: {e}") from None
        if self.augmentation is not None:
            x = self.augmentation(x)
        return x, int(self.y[i]), int(self.g[i]), int(i)

    @property
    def has_random_augmentation(self) -> bool:
        return self.augmentation is not None

    def without_augmentation(self) -> GroupedDataset:
        """The same split with the random augmentation removed (for evaluation and the cache)."""
        view = GroupedDataset.__new__(GroupedDataset)
        view.__dict__.update(self.__dict__)
        view.augmentation = None
        return view

    def with_groups(self, g: torch.Tensor) -> GroupedDataset:
        """The same split with other (N,) group ids (inferred training groups); inputs are shared."""
        if g.shape != self.y.shape:
            raise ValueError(f"g: expected shape {tuple(self.y.shape)}, got {tuple(g.shape)}")
        view = GroupedDataset.__new__(GroupedDataset)
        view.__dict__.update(self.__dict__)
        view.g = g.long()
        return view

    def decoded(self, max_bytes: int, num_workers: int = 0, batch_size: int = 256) -> GroupedDataset:
        """This split without augmentation, its inputs decoded and transformed once and held in memory
        as an (N, ...) tensor, for a model that reads it again and again (validation-driven weights
        draw a validation batch every K steps). Unchanged (the augmentation-free view) when the inputs
        are in memory already or would take more than ``max_bytes``; ``num_workers`` decode, in
        batches of ``batch_size`` (decoding is per image: the batches change no value)."""
        view = self.without_augmentation()
        if self.inputs is not None or len(self) == 0:
            return view
        first = view[0][0]
        if first.numel() * first.element_size() * len(self) > max_bytes:
            return view
        # Sequential and whole on every process (not eval_loader's per-rank shares): every rank draws
        # the same validation batch, so that lambda stays the same on every rank.
        batches = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        return self.with_inputs(torch.cat([x for x, *_ in batches]))

    def with_inputs(self, inputs: torch.Tensor) -> GroupedDataset:
        """The same split (labels, groups, identity) with its inputs decoded and transformed already:
        ``inputs`` (N, ...) in memory, items taken as they are (no transform, no augmentation)."""
        return GroupedDataset(self.y, self.g, inputs=inputs, identity=self.identity)

    def counts(self, n: int, by: str = "group") -> torch.Tensor:
        """(n,) int64 counts per group (``by="group"``) or per class (``by="class"``)."""
        ids = self.g if by == "group" else self.y
        return torch.bincount(ids, minlength=n)

    def fingerprint(self) -> str:
        """A hash of the data's identity, labels, groups and deterministic transform."""
        h = hashlib.sha256()
        h.update(json.dumps(self.identity, sort_keys=True, default=str).encode())
        h.update(repr(self.transform).encode())
        h.update(self.y.numpy().tobytes())
        h.update(self.g.numpy().tobytes())
        if self.inputs is not None:
            h.update(self.inputs.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class DatasetBundle:
    """A dataset's three splits and its grouping.

    Attributes:
        name: registry name. grouping: group and class names. input_shape: shape of one x.
        splits: ``{"train": ..., "val": ..., "test": ...}``.
        published_counts: per split, the published group counts (G,) when known, for warnings.
        warnings: messages to show the user (e.g. counts that differ from the published ones).
        train_groups: the groups training uses when they are not the data's own (inferred
            pseudo-groups): their grouping and (N_train,) ids. Evaluation always uses ``grouping``.
    """

    name: str
    grouping: Grouping
    input_shape: tuple[int, ...]
    splits: dict[str, GroupedDataset]
    published_counts: dict[str, list[int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    train_groups: tuple[Grouping, torch.Tensor] | None = None

    @property
    def train(self) -> GroupedDataset:
        return self.splits["train"]

    @property
    def fit_grouping(self) -> Grouping:
        """The grouping of the groups training uses (objective, sampler, training metrics)."""
        return self.grouping if self.train_groups is None else self.train_groups[0]

    @property
    def fit_train(self) -> GroupedDataset:
        """The training split as training sees it: its items carry the training group ids."""
        return self.train if self.train_groups is None else self.train.with_groups(self.train_groups[1])

    def fit_group_counts(self) -> torch.Tensor:
        """(G_fit,) int64 training samples per training group."""
        return self.fit_train.counts(self.fit_grouping.n_groups, "group")

    def with_train_groups(self, grouping: Grouping, ids: torch.Tensor) -> DatasetBundle:
        """A copy that trains on groups ``ids`` (N_train,) of ``grouping``; evaluation is unchanged."""
        if grouping.class_names != self.grouping.class_names:
            raise ValueError("grouping: expected the dataset's classes")
        return dataclasses.replace(self, train_groups=(grouping, ids.long()))

    @property
    def val(self) -> GroupedDataset:
        return self.splits["val"]

    @property
    def test(self) -> GroupedDataset:
        return self.splits["test"]

    @property
    def n_classes(self) -> int:
        return self.grouping.n_classes

    @property
    def n_groups(self) -> int:
        return self.grouping.n_groups

    def group_counts(self, split: str = "train") -> torch.Tensor:
        """(G,) int64 samples per group in a split."""
        return self.splits[split].counts(self.n_groups, "group")

    def class_counts(self, split: str = "train") -> torch.Tensor:
        """(C,) int64 samples per class in a split."""
        return self.splits[split].counts(self.n_classes, "class")

    def class_prior(self) -> torch.Tensor:
        """(C,) float32 class frequencies of the training split."""
        c = self.class_counts("train").float()
        return c / c.sum()
