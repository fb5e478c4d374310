"""Datasets: the contract (:mod:`groupdistil.data.base`) and one module per source."""

from __future__ import annotations

from groupdistil.data.base import SPLITS, DatasetBundle, GroupedDataset
from groupdistil.data.options import DataConfig
from groupdistil.data.registry import DATASETS, load_dataset

__all__ = ["DATASETS", "SPLITS", "DataConfig", "DatasetBundle", "GroupedDataset", "load_dataset"]
