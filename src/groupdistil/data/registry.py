"""Dataset names -> builders. Each builder takes a :class:`DataConfig` and returns a bundle."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from groupdistil.data.base import DatasetBundle
from groupdistil.data.options import DataConfig
from groupdistil.errors import UserError


class DatasetSpec(NamedTuple):
    build: Callable[[DataConfig], DatasetBundle]
    summary: str
    needs_root: bool


DATASETS: dict[str, DatasetSpec] = {}


def load_dataset(config: DataConfig) -> DatasetBundle:
    """Build the dataset a config names; unknown names list the valid ones."""
    spec = DATASETS.get(config.dataset)
    if spec is None:
        raise UserError(f"--dataset: unknown name {config.dataset!r}; expected one of {', '.join(DATASETS)}")
    if spec.needs_root and config.root is None:
        raise UserError(f"--root: dataset {config.dataset} reads a local copy; pass its folder")
    return spec.build(config)
