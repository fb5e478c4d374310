"""final.json has one schema (runs/final.py): the writer checks it before writing, every reader reads
through it, and each malformed value is one line naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from groupdistil.errors import UserError
from groupdistil.runs.final import read_final
from groupdistil.runs.outputs import RunWriter
from report_runs import write_run


def _run(tmp_path: Path) -> Path:
    return write_run(tmp_path, role="student", name="erm", method="erm", options={}, seed=1,
                     group_acc={"landbird_land": 0.9, "landbird_water": 0.7, "waterbird_land": 0.6,
                                "waterbird_water": 0.8})


def test_the_record_reads_typed_values_and_keeps_the_file_as_written(tmp_path: Path) -> None:
    final = _run(tmp_path) / "final.json"
    record, data = read_final(final)
    assert data == json.loads(final.read_text())
    assert (record.role, record.seed, record.val_groups) == ("student", 1, "labels")
    assert record.splits.test.worst_group_acc == pytest.approx(0.6)
    assert record.splits.test.reliability is not None
    assert len(record.splits.test.reliability.count) == len(data["splits"]["test"]["reliability"]["count"])


def _edit_val(d: dict[str, Any]) -> None:
    d["splits"]["val"]["class_acc"] = None


def _uneven(d: dict[str, Any]) -> None:
    d["splits"]["test"]["reliability"]["count"].append(1)


def _float_count(d: dict[str, Any]) -> None:
    d["splits"]["test"]["reliability"]["count"][2] = 1.5


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_edit_val, r"splits\.val\.class_acc: expected an object \{name: accuracy\}, got None"),
        (_uneven, r"splits\.test\.reliability: expected confidence, accuracy and count of equal length"),
        (_float_count, r"splits\.test\.reliability\.count\[2\]: expected an integer \(64-bit\), got 1\.5"),
        (lambda d: d.update(selected_epoch="3"), r"selected_epoch: expected an integer \(64-bit\), got '3'"),
        (lambda d: d.update(skipped_steps=10**400), "skipped_steps: .*got 'an integer of 401 digits'"),
        (lambda d: d.update(name={"a": "{x}"}), r"name: expected a string, got \{'a': '\{x\}'\}"),
    ],
)
def test_every_split_and_field_is_checked(tmp_path: Path, edit, message: str) -> None:
    final = _run(tmp_path) / "final.json"
    data = json.loads(final.read_text())
    edit(data)
    final.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message) as info:
        read_final(final)
    assert str(info.value).startswith(f"{final}: ")
    assert "\n" not in str(info.value)


def test_a_list_at_the_top_level_or_a_folder_in_its_place_is_one_line(tmp_path: Path) -> None:
    final = tmp_path / "final.json"
    final.write_text("[1, 2]")
    with pytest.raises(UserError, match="the top level: expected an object, got list"):
        read_final(final)
    final.unlink()
    final.mkdir()
    with pytest.raises(UserError, match=r"final\.json: cannot read the file \(Is a directory\)"):
        read_final(final)


def test_the_writer_refuses_a_record_it_could_not_read_back(tmp_path: Path) -> None:
    """A writer bug (here an accuracy of 81.5 %) is caught before final.json, the finished-run marker,
    exists: a traceback (it is not the user's mistake) and no file."""
    _, data = read_final(_run(tmp_path / "a") / "final.json")
    data["splits"]["test"]["avg_acc"] = 81.5
    writer = RunWriter(tmp_path / "b", weight_names=(), tensorboard=False)
    with pytest.raises(ValidationError, match="avg_acc"):
        writer.finish(data)
    assert not (tmp_path / "b" / "final.json").exists()
