"""Counts of a bundle per split x group and per class, as a JSON-able dict or a text table."""

from __future__ import annotations

from groupdistil.data.base import SPLITS, DatasetBundle


def group_counts_json(bundle: DatasetBundle) -> dict[str, dict[str, dict[str, int]]]:
    """``{"splits": {split: {group name: count}}}`` for train, val and test."""
    names = bundle.grouping.group_names
    return {
        "splits": {
            split: dict(zip(names, bundle.group_counts(split).tolist(), strict=True)) for split in SPLITS
        }
    }


def _table(title: str, names: tuple[str, ...], counts: dict[str, list[int]]) -> list[str]:
    width = max([len(title), *map(len, names), len("total")])
    head = f"{title:<{width}}" + "".join(f"{s:>9}" for s in SPLITS)
    rows = [f"{n:<{width}}" + "".join(f"{counts[s][i]:>9}" for s in SPLITS) for i, n in enumerate(names)]
    total = f"{'total':<{width}}" + "".join(f"{sum(counts[s]):>9}" for s in SPLITS)
    return [head, *rows, total]


def format_counts(bundle: DatasetBundle) -> str:
    """A text report: shapes, the split x group table, the split x class table, then warnings."""
    g = bundle.grouping
    shape = tuple(bundle.input_shape)
    lines = [f"dataset {bundle.name}: input {shape}, {g.n_classes} classes, {g.n_groups} groups"]
    lines += ["", *_table("group", g.group_names, {s: bundle.group_counts(s).tolist() for s in SPLITS})]
    if g.kind != "class":  # class-grouped datasets would print the same table twice
        lines += ["", *_table("class", g.class_names, {s: bundle.class_counts(s).tolist() for s in SPLITS})]
    if bundle.warnings:
        lines += ["", *(f"warning: {w}" for w in bundle.warnings)]
    return "\n".join(lines)
