"""Table helpers of the readers: the distinct-value shortcuts give exactly the per-cell results."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groupdistil.data._io import Table, map_distinct, resolve_paths
from groupdistil.errors import DataError


def test_map_distinct_equals_the_plain_map_and_never_conflates_equal_numbers():
    calls = []

    def fn(v):
        calls.append(v)
        return str(v).strip()

    repeated = ["a", " b", "a", "a", " b", "a"]
    assert map_distinct(repeated, fn) == [fn(v) for v in repeated]
    assert len(calls) == 2 + len(repeated)  # once per distinct value, then the reference map
    # 1, 1.0 and True are one set entry but print differently: no shortcut for non-str cells.
    mixed = [1, 1.0, True, 1, 1.0, True]
    assert map_distinct(mixed, str) == ["1", "1.0", "True", "1", "1.0", "True"]
    assert map_distinct([[1], [1]], str) == ["[1]", "[1]"]  # unhashable cells


def test_a_missing_value_is_reported_at_its_first_row_with_the_shortcut():
    t = Table(Path("m.csv"), {"site": ["a", "b"] * 50 + ["NA"] + ["a"] * 10}, lines=list(range(2, 113)))
    with pytest.raises(DataError, match=r"m.csv: line 102, column 'site': expected a value, got a missing"):
        t.values("site")


SEGMENT = st.sampled_from(["a", "b.jpg", ".", "..", "", ".hidden", "x..y", "c d", "/"])


@settings(max_examples=300, deadline=None)
@given(st.lists(SEGMENT, min_size=1, max_size=5))
def test_resolved_paths_equal_normpath_of_join(tmp_path_factory, parts):
    folder = tmp_path_factory.getbasetemp() / "root"
    rel = "/".join(parts).strip()
    if not rel:  # an empty cell is a missing value, rejected before paths are resolved
        return
    table = Table(Path("m.csv"), {"path": [rel]}, lines=[2])
    base = os.path.abspath(folder)
    want = os.path.normpath(os.path.join(base, rel))
    if want.startswith(base.rstrip(os.sep) + os.sep):
        assert resolve_paths(table, "path", folder).tolist() == [want]
    else:
        with pytest.raises(DataError, match="leaves"):
            resolve_paths(table, "path", folder)
        assert resolve_paths(table, "path", folder, allow_outside=True).tolist() == [want]
