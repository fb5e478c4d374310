"""The record of checked image headers: a file is read again exactly when it changed since it passed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from groupdistil.data import DataConfig, header_record, load_dataset
from groupdistil.data.header_record import ENV, check_unrecorded, file_versions, record_folder
from groupdistil.data.images import check_image_header
from groupdistil.errors import DataError
from test_data_safety import image_manifest, noise_jpeg


def files(tmp_path: Path, n: int = 6) -> np.ndarray:
    return np.asarray([str(noise_jpeg(tmp_path / "img" / f"{i}.jpg", i)) for i in range(n)])


class Counting:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, path: str) -> None:
        self.seen.append(path)
        check_image_header(path)


def test_checked_files_are_not_read_again_until_they_change(tmp_path):
    paths, record = files(tmp_path), tmp_path / "record"
    first = Counting()
    assert check_unrecorded(paths, first, record) == 6 and first.seen == list(paths)
    again = Counting()
    assert check_unrecorded(paths, again, record) == 0 and again.seen == []
    # Rewritten in place with the same size and its modification time set back: the same inode, size
    # and mtime, and only the status-change time tells.
    before = os.stat(paths[2])
    Path(paths[2]).write_bytes(Path(paths[2]).read_bytes())
    os.utime(paths[2], ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(paths[2])
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    changed = Counting()
    assert check_unrecorded(paths, changed, record) == 1 and changed.seen == [paths[2]]
    # Another split (other paths) has its own record.
    assert check_unrecorded(paths[:3], Counting(), record) == 3


def test_a_damaged_replacement_with_the_old_times_is_still_refused(tmp_path):
    paths, record = files(tmp_path), tmp_path / "record"
    check_unrecorded(paths, check_image_header, record)
    old = os.stat(paths[4])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"x" * old.st_size)  # the same size, not an image
    os.utime(bad, ns=(old.st_atime_ns, old.st_mtime_ns))  # and the old modification time
    os.replace(bad, paths[4])
    with pytest.raises(DataError, match=r"4\.jpg: not an image file"):
        check_unrecorded(paths, check_image_header, record)
    # A split with a bad file is not recorded as passed: the next check refuses it again.
    with pytest.raises(DataError, match=r"4\.jpg: not an image file"):
        check_unrecorded(paths, check_image_header, record)


def test_missing_files_and_folders_are_always_checked(tmp_path):
    paths, record = files(tmp_path, 3), tmp_path / "record"
    (tmp_path / "img" / "d.jpg").mkdir()
    with_folder = np.append(paths, str(tmp_path / "img" / "d.jpg"))
    assert (file_versions(with_folder)[3] == np.iinfo(np.uint64).max).all()
    with pytest.raises(DataError, match=r"d\.jpg: cannot read the image header"):
        check_unrecorded(with_folder, check_image_header, record)
    Path(paths[1]).unlink()
    with pytest.raises(DataError, match=r"1\.jpg: image file not found"):
        check_unrecorded(paths, check_image_header, record)


@pytest.mark.parametrize("damage", ["garbage", "empty", "other shape", "other dtype", "pickle"])
def test_a_record_that_does_not_fit_is_ignored(tmp_path, damage):
    paths, record = files(tmp_path, 4), tmp_path / "record"
    check_unrecorded(paths, check_image_header, record)
    (npy,) = record.glob("*.npy")
    if damage == "garbage":
        npy.write_bytes(b"\x93NUMPY garbage")
    elif damage == "empty":
        npy.write_bytes(b"")
    elif damage == "other shape":
        np.save(npy, file_versions(paths[:3]))
    elif damage == "other dtype":
        np.save(npy, file_versions(paths).astype(np.int64))
    else:  # an object array would need pickle to load: refused, never executed
        np.save(npy, np.array([object()] * 4, dtype=object), allow_pickle=True)
    again = Counting()
    assert check_unrecorded(paths, again, record) == 4
    assert check_unrecorded(paths, Counting(), record) == 0  # written anew


def test_an_unwritable_record_folder_leaves_the_check_as_it_was(tmp_path):
    paths = files(tmp_path, 3)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert check_unrecorded(paths, Counting(), blocked / "record") == 3
    assert check_unrecorded(paths, Counting(), blocked / "record") == 3
    assert blocked.read_text() == "not a folder"
    assert check_unrecorded(paths, Counting(), None) == 3  # no record at all


def test_the_record_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, str(tmp_path / "r"))
    assert record_folder() == tmp_path / "r"
    monkeypatch.setenv(ENV, "")
    assert record_folder() is None
    monkeypatch.delenv(ENV)
    assert record_folder() == Path.home() / ".cache" / "groupdistil" / "image-headers"


def test_loading_a_dataset_twice_reads_the_headers_once(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "record"))
    manifest = image_manifest(tmp_path, 12)
    opened: list[str] = []
    import groupdistil.data.images as images

    def counting(path: str) -> None:
        opened.append(path)
        check_image_header(path)

    monkeypatch.setattr(images, "check_image_header", counting)
    load_dataset(DataConfig(dataset="manifest", root=manifest, image_size=8))
    assert len(opened) == 12
    load_dataset(DataConfig(dataset="manifest", root=manifest, image_size=8))
    assert len(opened) == 12
    (tmp_path / "img" / "7.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"7\.jpg: not an image file"):
        load_dataset(DataConfig(dataset="manifest", root=manifest, image_size=8))


def mark_pid(path: str) -> None:
    """A check that notes which process ran it (a file per process and path) and refuses 'bad' names."""
    Path(path + f".{os.getpid()}.seen").touch()
    if "bad" in path:
        raise DataError(f"{path}: bad")


def test_many_files_are_checked_in_worker_processes_and_the_first_bad_one_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(header_record, "PARALLEL_FROM", 8)
    paths = [str(tmp_path / f"{i:02d}.jpg") for i in range(40)]
    header_record.check_all(paths, mark_pid, 2)
    seen = sorted(tmp_path.glob("*.seen"))
    assert len(seen) == 40  # each file once
    assert {p.name.split(".")[2] for p in seen} != {str(os.getpid())}  # in other processes
    bad = [str(tmp_path / f"{i:02d}.jpg") for i in range(40)]
    bad[33], bad[7] = bad[33] + "bad", bad[7] + "bad"  # two bad files, in different chunks
    with pytest.raises(DataError, match=r"07\.jpgbad: bad"):
        header_record.check_all(bad, mark_pid, 2)
    with pytest.raises(DataError, match=r"07\.jpgbad: bad"):  # the same as in one process
        header_record.check_all(bad, mark_pid, 1)


def test_few_files_or_one_core_are_checked_in_this_process(tmp_path):
    paths = [str(tmp_path / f"{i}.jpg") for i in range(5)]
    header_record.check_all(paths, mark_pid, 2)  # below PARALLEL_FROM
    assert {p.name.split(".")[2] for p in tmp_path.glob("*.seen")} == {str(os.getpid())}
