"""Table helpers of the readers: the distinct-value shortcuts give exactly the per-cell results."""

from __future__ import annotations

import os
import re
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


def _linked_root(tmp_path: Path) -> Path:
    """root/ with a real file, a link to a file outside, a linked folder outside and one inside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_text("x")
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.png").write_text("x")
    (root / "img" / "link.png").symlink_to(outside / "secret.png")
    (root / "shared").symlink_to(outside, target_is_directory=True)
    (root / "alias").symlink_to(root / "img", target_is_directory=True)
    (root / "img" / "inner.png").symlink_to(root / "img" / "a.png")
    return root


@pytest.mark.parametrize("rel", ["img/link.png", "shared/secret.png", "./shared/../shared/secret.png"])
def test_a_symbolic_link_out_of_the_folder_is_refused_unless_allowed(tmp_path, rel):
    root = _linked_root(tmp_path)
    table = Table(Path("m.csv"), {"path": ["img/a.png", rel]}, lines=[2, 3])
    real = os.path.realpath(tmp_path / "outside" / "secret.png")
    with pytest.raises(DataError, match=rf"m.csv: line 3, column 'path': path '{re.escape(rel)}' leaves "
                                        rf".*root through a symbolic link \(to {re.escape(real)}\)"):
        resolve_paths(table, "path", root)
    got = resolve_paths(table, "path", root, allow_outside=True).tolist()
    assert got == [str(root / "img/a.png"), os.path.normpath(os.path.join(root, rel))]  # as the table names it


def test_links_that_stay_inside_and_a_linked_root_are_accepted(tmp_path):
    root = _linked_root(tmp_path)
    rows = ["img/a.png", "alias/a.png", "img/inner.png", "missing/none.png"]
    table = Table(Path("m.csv"), {"path": rows}, lines=[2, 3, 4, 5])
    assert resolve_paths(table, "path", root).tolist() == [str(root / r) for r in rows]
    (tmp_path / "via").symlink_to(root, target_is_directory=True)  # the folder itself reached by a link
    assert resolve_paths(table, "path", tmp_path / "via").tolist() == [str(tmp_path / "via" / r) for r in rows]
