"""Training groups without group labels: pseudo-groups read off a trained model.

Sources (``data.train_groups`` / ``--train-groups``):

- ``labels``: the dataset's own groups (the default).
- ``teacher-errors``: within each class, the samples the model classifies right and wrong (JTT's
  error set, split by class): ``g = 2 y + [argmax f(x) != y]``, 2C groups.
- ``teacher-clusters``: within each class, k-means on the model's penultimate features (GEORGE):
  ``g = k y + cluster``, kC groups.
- ``none``: one group holding every sample (class-level objectives and KD still apply).

The model is the teacher, or ``--group-reference`` (an ERM model, JTT's identification model). Its
outputs come from the teacher-logit cache; the ids are cached under the same fingerprint rules.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, get_args

import numpy as np
import torch
from torch import nn

from groupdistil.checkpoint import atomic_write
from groupdistil.data.base import GroupedDataset
from groupdistil.data.options import DataConfig
from groupdistil.groups import Grouping
from groupdistil.teachers import LogitCache, cache_key, cached_or_computed, compute_logits_and_features

#: The group sources, as the config spells them (``data.train_groups``): one list, the config's.
TRAIN_GROUPS = get_args(DataConfig.model_fields["train_groups"].annotation)
#: k-means restarts per class (the best inertia is kept; sklearn's seeded initialisation).
KMEANS_RESTARTS = 10


class InferredGroups(NamedTuple):
    """Training groups: (N,) int64 ``ids``, a one-line ``description``, their :class:`Grouping` and
    the ``source`` that made them."""

    ids: torch.Tensor
    description: str
    grouping: Grouping
    source: str


def source_grouping(source: str, class_names: Sequence[str], k: int = 2) -> Grouping:
    """The grouping of a source: ``<class>_right/_wrong``, ``<class>_c<j>`` or the single ``all``."""
    if source == "teacher-errors":
        return Grouping.explicit(class_names, [f"{c}_{s}" for c in class_names for s in ("right", "wrong")])
    if source == "teacher-clusters":
        return Grouping.explicit(class_names, [f"{c}_c{j}" for c in class_names for j in range(k)])
    return Grouping.explicit(class_names, ["all"])


def describe(source: str, ids: torch.Tensor, k: int = 2) -> str:
    """One line on what the groups are and their sizes."""
    n = len(ids)
    if source == "teacher-errors":
        wrong = int((ids % 2).sum())
        what = f"misclassified: {wrong} of {n} ({100 * wrong / max(n, 1):.1f}%); right/wrong within each class"
    elif source == "teacher-clusters":
        what = f"k-means with k = {k} within each class on penultimate features"
    else:
        what = "one group (no group information)"
    sizes = torch.bincount(ids.long()).tolist() if n else []
    return f"{source}: {what}; group sizes {'/'.join(map(str, sizes))}"


def _result(source: str, ids: torch.Tensor, class_names: Sequence[str], k: int = 2) -> InferredGroups:
    return InferredGroups(ids.long(), describe(source, ids, k), source_grouping(source, class_names, k), source)


def error_groups(logits: torch.Tensor, y: torch.Tensor, class_names: Sequence[str]) -> InferredGroups:
    """``g = 2 y + wrong``: right and wrong within each class, from (N, C) logits and (N,) labels."""
    return _result("teacher-errors", 2 * y.long() + (logits.argmax(1) != y).long(), class_names)


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster ids of x (n, D), renumbered by decreasing size (ties: first occurrence) so ids are canonical."""
    if len(x) <= k:
        return np.arange(len(x))
    from sklearn.cluster import KMeans  # here: importing scikit-learn costs every command a second

    labels = KMeans(n_clusters=k, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(x)
    sizes = np.bincount(labels, minlength=k)
    first = np.array([np.flatnonzero(labels == j)[0] if sizes[j] else len(x) for j in range(k)])
    order = np.lexsort((first, -sizes))  # new id i = old cluster order[i]
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return rank[labels]


def cluster_groups(
    features: torch.Tensor, y: torch.Tensor, class_names: Sequence[str], k: int, seed: int = 0
) -> InferredGroups:
    """``g = k y + cluster``: k-means (k clusters) within each class on (N, D) features.

    Features are L2-normalised first (our choice: the direction of a penultimate feature, not its
    norm, tells which rule the model applied). Deterministic for a seed.
    """
    if k < 1:
        raise ValueError(f"k: expected a positive number of clusters, got {k}")
    x = torch.nn.functional.normalize(features.float(), dim=1).numpy().astype(np.float64)
    y_np = y.long().numpy()
    ids = np.zeros(len(y_np), dtype=np.int64)
    for c in range(len(class_names)):
        rows = np.flatnonzero(y_np == c)
        ids[rows] = c * k + _kmeans(x[rows], k, seed)
    return _result("teacher-clusters", torch.from_numpy(ids), class_names, k)


def single_group(y: torch.Tensor, class_names: Sequence[str]) -> InferredGroups:
    """Every sample in one group ``all``."""
    return _result("none", torch.zeros(len(y), dtype=torch.long), class_names)


def infer_groups(
    source: str,
    y: torch.Tensor,
    class_names: Sequence[str],
    *,
    logits: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    clusters: int = 2,
    seed: int = 0,
) -> InferredGroups:
    """Training groups from a model's outputs on the training split.

    Args:
        source: ``teacher-errors`` (needs logits), ``teacher-clusters`` (needs features) or ``none``.
        y: (N,) labels. class_names: C names.
        logits: (N, C) the model's logits. features: (N, D) its penultimate features.
        clusters: k of ``teacher-clusters``. seed: k-means seed.

    Returns:
        (ids (N,), description, grouping); ``ids`` index ``grouping.group_names``.
    """
    if source == "teacher-errors":
        if logits is None:
            raise ValueError("logits: teacher-errors needs the model's (N, C) logits")
        return error_groups(logits, y, class_names)
    if source == "teacher-clusters":
        if features is None:
            raise ValueError("features: teacher-clusters needs the model's (N, D) penultimate features")
        return cluster_groups(features, y, class_names, clusters, seed)
    if source == "none":
        return single_group(y, class_names)
    raise ValueError(f"source: expected one of {', '.join(s for s in TRAIN_GROUPS if s != 'labels')}, "
                     f"got {source!r}")


def agreement(pseudo: torch.Tensor, true: torch.Tensor, n_pseudo: int, n_true: int) -> dict[str, Any]:
    """How inferred groups match known ones: the (n_pseudo, n_true) contingency table and the
    adjusted Rand index (1: the same partition, about 0: chance)."""
    table = torch.zeros(n_pseudo, n_true, dtype=torch.long)
    table.index_put_((pseudo.long(), true.long()), torch.ones_like(pseudo, dtype=torch.long), accumulate=True)
    from sklearn.metrics import adjusted_rand_score

    ari = float(adjusted_rand_score(true.numpy(), pseudo.numpy()))
    return {"ari": ari, "contingency": table.tolist()}


def write_assignment(path: Path, inferred: InferredGroups, y: torch.Tensor) -> None:
    """CSV ``sample,class,pseudo_group`` (training-split index, class name, group name), one row each."""
    names, classes = inferred.grouping.group_names, inferred.grouping.class_names
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("sample", "class", "pseudo_group"))
    w.writerows((i, classes[c], names[g]) for i, (c, g) in enumerate(zip(y.tolist(), inferred.ids.tolist())))
    data = buf.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))


def groups_from_model(
    model: nn.Module,
    dataset: GroupedDataset,
    source: str,
    class_names: Sequence[str],
    *,
    cache: LogitCache | None = None,
    clusters: int = 2,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[InferredGroups, str]:
    """Pseudo-groups of ``dataset`` (the training split, un-augmented) from ``model``'s outputs.

    With a cache, the ids are stored under the key of the model's weights, the data and the settings
    (source, k, seed), beside the model's logits and features, and read back by later runs and by the
    other ranks. Returns the groups and the cache status: ``hit``, ``miss`` or ``off``.
    """
    data = dataset.without_augmentation()
    k = clusters if source == "teacher-clusters" else 0
    key = cache_key(model, data, "groups", source, k, seed if k else 0)
    if cache is not None:
        ids = cache.load(key, (len(data),), np.int64)
        if ids is not None:
            return _result(source, ids.clone(), class_names, k), "hit"
    if cache is not None:
        logits, features, _ = cached_or_computed(model, data, cache, len(class_names), features=True,
                                                 device=device)
    else:
        logits, features = compute_logits_and_features(model, data, device=device)
    inferred = infer_groups(source, data.y, class_names, logits=logits, features=features, clusters=clusters,
                            seed=seed)
    if cache is None:
        return inferred, "off"
    cache.store(key, inferred.ids)
    return inferred, "miss"
