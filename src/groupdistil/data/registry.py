"""Dataset names -> builders. Each builder takes a :class:`DataConfig` and returns a bundle.

Every source module adds its names to :data:`DATASETS` when imported; this module imports them all
(:data:`SOURCE_MODULES`) so that :data:`DATASETS` and :func:`load_dataset` always see every name.
Source modules keep heavy imports (nibabel, pyarrow, scikit-learn) inside their builders.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple

from groupdistil.data.base import DatasetBundle
from groupdistil.data.longtail import long_tail_view
from groupdistil.data.options import DataConfig
from groupdistil.errors import UserError


class DatasetSpec(NamedTuple):
    build: Callable[[DataConfig], DatasetBundle]
    summary: str
    needs_root: bool
    #: Whether ``build`` applies `data.imbalance_ratio` itself (cifar*-lt); else load_dataset does.
    own_imbalance: bool = False


DATASETS: dict[str, DatasetSpec] = {}

#: Modules that register datasets, in the order ``groupdistil datasets`` lists them.
SOURCE_MODULES = (
    "groupdistil.data.digits",
    "groupdistil.data.waterbirds",
    "groupdistil.data.celeba",
    "groupdistil.data.cifar_lt",
    "groupdistil.data.mnms",
    "groupdistil.data.manifest",
    "groupdistil.data.imagefolder",
)


def load_dataset(config: DataConfig, *, check_files: bool = True) -> DatasetBundle:
    """Build the dataset a config names; unknown names list the valid ones.

    With ``check_files``, every input file a split's loader reads lazily is checked now (a loader's
    ``check()``: an image's header, :meth:`ImageFiles.check`), so that a missing or corrupt file is one
    line before a run touches its folder, not a failure hours into training. Counting alone
    (``data inspect``) passes False: it reads the metadata only.
    """
    spec = DATASETS.get(config.dataset)
    if spec is None:
        raise UserError(f"`data.dataset`: unknown name {config.dataset!r}; expected one of {', '.join(DATASETS)}")
    if spec.needs_root and config.root is None:
        raise UserError(f"`data.root`: dataset {config.dataset} reads a local copy; pass its folder")
    bundle = spec.build(config)
    if config.imbalance_ratio is not None and not spec.own_imbalance:
        bundle = long_tail_view(bundle, config.imbalance_ratio, config.data_seed)
    if check_files:
        for split in bundle.splits.values():
            check = getattr(split.loader, "check", None)
            if check is not None:
                check()
    return bundle


# Last, once DATASETS exists: the source modules import this module to register themselves.
for _name in SOURCE_MODULES:
    importlib.import_module(_name)
