"""A full disk (or a read-only one, a quota, a permission) is one line naming the file, exit 74; the
temporary file is removed and the last good checkpoint still loads and resumes."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import valid_checkpoint
from groupdistil.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from groupdistil.errors import STORAGE_EXIT_CODE, StorageError, UserError
from groupdistil.runs.outputs import RunWriter, write_json
from groupdistil.teachers import LogitCache
from test_crash_safety import _measured_out

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# ---- the atomic writes: every kind of writer, every kind of refusal ----------------------------------


WRITERS = {
    "checkpoint (torch.save)": lambda path, big: save_checkpoint(path, {"model": {"w": torch.zeros(big)}}),
    "teacher cache (np.save)": lambda path, big: LogitCache(path.parent).store(path.stem, torch.zeros(big, 2)),
    "final.json (text)": lambda path, big: write_json(path, {"x": list(range(big))}),
}
FILE_NAMES = {"checkpoint (torch.save)": "last.pt", "teacher cache (np.save)": "k.npy",
              "final.json (text)": "final.json"}


@pytest.mark.parametrize("kind", WRITERS)
def test_an_injected_full_disk_is_one_error_naming_the_file_and_keeps_the_old_one(kind, tmp_path, monkeypatch):
    path = tmp_path / FILE_NAMES[kind]
    WRITERS[kind](path, 4)
    before = path.read_bytes()
    monkeypatch.setenv("GROUPDISTIL_NOSPACE_AT", path.name)
    with pytest.raises(StorageError) as info:
        WRITERS[kind](path, 50_000)
    assert str(info.value) == f"{path}: cannot write: [ENOSPC] No space left on device"
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    assert path.read_bytes() == before, "the previous version is untouched"
    assert _leftovers(tmp_path) == [], "the half-written temporary file is removed"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES])
@pytest.mark.parametrize("where", ["mkstemp", "fsync", "replace"])
def test_each_refusal_of_the_file_system_names_its_errno(code, where, tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint(path, valid_checkpoint(tmp_path))

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    target = {"mkstemp": (tempfile, "mkstemp"), "fsync": (os, "fsync"), "replace": (os, "replace")}[where]
    monkeypatch.setattr(*target, refuse)
    with pytest.raises(StorageError, match=rf"best\.pt: cannot write: \[{errno.errorcode[code]}\] "):
        save_checkpoint(path, valid_checkpoint(tmp_path))
    monkeypatch.undo()
    assert _leftovers(tmp_path) == []
    assert load_checkpoint(path)["model_name"] == valid_checkpoint(tmp_path)["model_name"]


def test_other_errors_of_the_writer_are_not_storage_errors(tmp_path):
    # A bug of the caller (an object torch cannot save) stays what it is: not blamed on the disk.
    with pytest.raises(Exception) as info:
        atomic_write(tmp_path / "f", lambda f: (_ for _ in ()).throw(TypeError("not bytes")))
    assert type(info.value) is TypeError
    assert _leftovers(tmp_path) == []


def test_the_k_th_write_of_a_file_fails_alone(tmp_path, monkeypatch):
    name = f"only-{uuid.uuid4().hex[:6]}.json"  # the counter is per process: a name of this test's own
    monkeypatch.setenv("GROUPDISTIL_NOSPACE_AT", f"{name}:2")
    write_json(tmp_path / name, {"a": 1})
    with pytest.raises(StorageError):
        write_json(tmp_path / name, {"a": 2})
    write_json(tmp_path / name, {"a": 3})
    assert json.loads((tmp_path / name).read_text()) == {"a": 3}


@pytest.mark.parametrize("log", ["metrics.jsonl", "group_weights.csv"])
def test_a_run_log_append_on_a_full_disk_is_one_error_naming_it(log, tmp_path, monkeypatch):
    writer = RunWriter(tmp_path / "run", ["g0", "g1"], tensorboard=False)
    writer.start("{}\n", resume_epoch=None)
    writer.log_weights(1, 0, [0.5, 0.5])
    monkeypatch.setenv("GROUPDISTIL_NOSPACE_AT", log)
    with pytest.raises(StorageError, match=rf"run/{log}: cannot write: \[ENOSPC\]"):
        writer.log_epoch(0, "train", {"loss": 1.0})


def test_tensorboard_write_errors_are_one_line(tmp_path, monkeypatch):
    writer = RunWriter(tmp_path / "run", [], tensorboard=True)

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer._tb, "flush", refuse)
    with pytest.raises(StorageError, match=r"run/tb: cannot write: \[ENOSPC\]"):
        writer.log_epoch(0, "train", {"loss": 1.0})
    monkeypatch.setattr(writer._tb, "close", refuse)
    with pytest.raises(StorageError, match=r"run/tb: cannot write"):
        writer.close()


# ---- a real full file system: a 600 KB tmpfs -----------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """A 600 KB tmpfs, or a skip saying why this machine cannot mount one (the injected fault above
    and in test_cli_* below covers the same code path everywhere)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip() or r.returncode})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path, leave: int) -> Path:
    """A file that takes the file system's free space but ``leave`` bytes."""
    st = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_a_checkpoint_on_a_full_tmpfs_keeps_the_last_good_one(tmpfs):
    path = tmpfs / "checkpoints" / "last.pt"
    save_checkpoint(path, valid_checkpoint(tmpfs))
    before = path.read_bytes()
    _fill(tmpfs, 8 * 1024)
    big = {**valid_checkpoint(tmpfs), "model": {"w": torch.from_numpy(np.ones(100_000, np.float32))}}
    with pytest.raises(StorageError, match=r"checkpoints/last\.pt: cannot write: \[ENOSPC\] No space left"):
        save_checkpoint(path, big)
    assert path.read_bytes() == before and _leftovers(tmpfs) == []
    load_checkpoint(path)


# ---- the command line: exit 74, one line, and --resume once there is space again ----------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GROUPDISTIL_")}
    full.update(PYTHONPATH=SRC, **(env or {}))
    return subprocess.run([sys.executable, "-m", "groupdistil", *args], capture_output=True, text=True,
                          env=full, timeout=300)


TRAIN = ["train", "--dataset", "spurious-digits", "--model", "mlp-small", "--epochs", "3", "--quiet"]


def _refused(r: subprocess.CompletedProcess, file: str) -> str:
    """The one line of a write refused for want of space; ``file`` is a regular expression."""
    err = r.stderr.strip()
    assert r.returncode == STORAGE_EXIT_CODE, r.stderr
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert re.fullmatch(rf"error: {file}: cannot write: \[ENOSPC\] No space left on device", err), err
    return err


@pytest.mark.slow
def test_cli_injected_full_disk_at_a_checkpoint_then_resume(tmp_path):
    out = tmp_path / "run"
    # Epoch 0's last.pt is written; epoch 1's meets a full disk part-way through.
    r = cli(*TRAIN, "--out", str(out), env={"GROUPDISTIL_NOSPACE_AT": "last.pt:2"})
    _refused(r, re.escape(str(out / "checkpoints/last.pt")))
    assert _leftovers(out) == []
    assert not (out / "final.json").exists()
    assert load_checkpoint(out / "checkpoints/last.pt")["epoch"] == 0
    r = cli(*TRAIN, "--out", str(out), "--resume")  # space is back
    assert r.returncode == 0, r.stderr
    full = tmp_path / "full"
    assert cli(*TRAIN, "--out", str(full)).returncode == 0
    for name in ("metrics.jsonl", "group_weights.csv", "final.json"):
        assert _measured_out(out / name) == _measured_out(full / name), name


@pytest.mark.slow
def test_cli_injected_full_disk_in_the_teacher_cache(tmp_path):
    teacher = tmp_path / "teacher"
    assert cli(*TRAIN, "--epochs", "1", "--out", str(teacher)).returncode == 0
    cache = tmp_path / "cache"
    args = ["distill", "--dataset", "spurious-digits", "--model", "mlp-small", "--epochs", "1", "--quiet",
            "--method", "kd", "--teacher", str(teacher / "checkpoints/best.pt"), "--teacher-cache-dir", str(cache)]
    assert cli(*args, "--out", str(tmp_path / "a")).returncode == 0
    (npy,) = cache.glob("*.npy")  # the file name is the cache key: the same in the next run
    shutil.rmtree(cache)
    r = cli(*args, "--out", str(tmp_path / "b"), env={"GROUPDISTIL_NOSPACE_AT": npy.name})
    _refused(r, re.escape(str(npy)))
    assert _leftovers(cache) == [] and not npy.exists()
    assert not (tmp_path / "b").exists(), "the cache is filled before the run folder is made"


@pytest.mark.slow
def test_cli_full_tmpfs_then_resume_once_space_is_back(tmpfs):
    out = tmpfs / "run"
    r = cli(*TRAIN, "--out", str(out), env={"GROUPDISTIL_KILL_AT": "epoch:0"})
    assert r.returncode < 0 and load_checkpoint(out / "checkpoints/last.pt")["epoch"] == 0
    # Room for the logs, not for a checkpoint (best.pt and last.pt are 55 and 110 KB here).
    filler = _fill(tmpfs, 40 * 1024)
    r = cli(*TRAIN, "--out", str(out), "--resume")
    # The killed run left its lock file: the resume says it takes it over, then the one error line.
    warning, _, rest = r.stderr.partition("\n")
    assert warning.startswith("warning: the lock of ") and "has ended; taking it over" in warning, r.stderr
    _refused(subprocess.CompletedProcess(r.args, r.returncode, r.stdout, rest),
             re.escape(str(out / "checkpoints")) + r"/(best|last)\.pt")
    assert _leftovers(tmpfs) == []
    assert load_checkpoint(out / "checkpoints/last.pt")["epoch"] == 0
    filler.unlink()
    r = cli(*TRAIN, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "final.json").read_text())["selected_epoch"] >= 0
