"""Grouping: the one object that knows which group a sample is in and what the groups are called.

Nothing else in the code base computes group ids. Numbering follows group DRO and WILDS:
``g = y * n_attr + a`` for (label, attribute) groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Grouping:
    """Names of classes and groups, and how group ids are formed.

    Attributes:
        class_names: C names, index = label.
        group_names: G names, index = group id.
        kind: ``label_x_attr`` (g = y * n_attr + a), ``class`` (g = y) or ``column`` (given ids).
        attr_names: the attribute values' names for ``label_x_attr``.
    """

    class_names: tuple[str, ...]
    group_names: tuple[str, ...]
    kind: str = "column"
    attr_names: tuple[str, ...] = ()

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    @property
    def n_attr(self) -> int:
        return len(self.attr_names)

    @classmethod
    def label_attribute(cls, class_names: Sequence[str], attr_names: Sequence[str]) -> Grouping:
        """Groups are (label, attribute) pairs named ``<class>_<attr>``, numbered y * n_attr + a."""
        names = tuple(f"{c}_{a}" for c in class_names for a in attr_names)
        return cls(tuple(class_names), names, "label_x_attr", tuple(attr_names))

    @classmethod
    def classes(cls, class_names: Sequence[str]) -> Grouping:
        """Each class is its own group (long-tailed benchmarks)."""
        return cls(tuple(class_names), tuple(class_names), "class")

    @classmethod
    def explicit(cls, class_names: Sequence[str], group_names: Sequence[str]) -> Grouping:
        """Groups given by a column of ids, named by ``group_names``."""
        return cls(tuple(class_names), tuple(group_names), "column")

    def group_ids(self, y: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) group ids from labels y (N,) and, for ``label_x_attr``, attributes a (N,)."""
        if self.kind == "class":
            return y.long().clone()
        if self.kind == "label_x_attr":
            if a is None:
                raise ValueError("a: this grouping needs an attribute per sample")
            return y.long() * self.n_attr + a.long()
        if a is None:
            raise ValueError("a: a column grouping needs the group ids")
        return a.long().clone()
