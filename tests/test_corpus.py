"""tests/corpus/cases.yaml: every malformed input gives its one-line message and exit code 2."""

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import valid_checkpoint
from groupdistil.checkpoint import save_checkpoint
from groupdistil.cli.app import run_app

CASES = yaml.safe_load((Path(__file__).parent / "corpus" / "cases.yaml").read_text())


def test_the_corpus_is_large_and_covers_every_reader():
    assert len(CASES) >= 30
    names = {c["name"].split("-")[0] for c in CASES}
    assert {"config", "waterbirds", "celeba", "manifest", "cifar10", "cifar100", "mnms"} <= names
    assert len({c["name"] for c in CASES}) == len(CASES)


def _value(v: Any) -> Any:
    # ``tensor:N`` stands for N float zeros (YAML has no tensors), at any depth.
    if isinstance(v, dict):
        return {k: _value(x) for k, x in v.items()}
    return torch.zeros(int(v[7:])) if isinstance(v, str) and v.startswith("tensor:") else v


def write_checkpoint(path: Path, changes: dict[str, Any]) -> None:
    """A valid checkpoint with ``changes``: a value replaces the field (``DELETE`` removes it); the
    folder around a ``checkpoints/last.pt`` is made a run folder of groupdistil."""
    data = valid_checkpoint(path.parent.parent)
    for key, value in changes.items():
        if value == "DELETE":
            del data[key]
        else:
            data[key] = _value(value)
    save_checkpoint(path, data)
    if path.parent.name == "checkpoints":  # the run folder of a last.pt
        (path.parent.parent / ".groupdistil-run").write_text("groupdistil run folder\n")
        (path.parent.parent / "config.yaml").write_text(yaml.safe_dump(data.get("config") or {}))


#: A process that holds a run folder's lock as a live run does (flock on the file beside the folder,
#: with its record), until its standard input closes. Standard library only: it starts in milliseconds.
HOLDER = """
import fcntl, json, os, socket, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "x"}).encode())
print("ready", flush=True)
sys.stdin.read()
"""


def hold_lock(path: Path) -> subprocess.Popen:
    """A live process holding the lock file ``path`` (``locked:`` of a case); close its stdin to end it."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    return p


def snapshot(root: Path) -> dict[Path, bytes | None]:
    return {p.relative_to(root): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_malformed_input(case, tmp_path, capsys, monkeypatch):
    for rel, text in case["files"].items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("ROOT", str(tmp_path)))
    for rel, changes in case.get("checkpoints", {}).items():
        write_checkpoint(tmp_path / rel, changes)
    for rel, text in case.get("binary", {}).items():  # bytes that are not UTF-8, written as latin-1 text
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("latin-1"))
    for rel, target in case.get("links", {}).items():  # symbolic links: path -> target
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).symlink_to(target.replace("ROOT", str(tmp_path)))
    for name, value in case.get("env", {}).items():  # fault injection (src/groupdistil/faults.py)
        monkeypatch.setenv(name, value)
    holders = [hold_lock(tmp_path / rel) for rel in case.get("locked", [])]
    before = snapshot(tmp_path)
    argv = [a.replace("ROOT", str(tmp_path)) for a in case["argv"]]
    try:
        assert run_app(argv) == case.get("exit", 2)
    finally:
        for p in holders:
            p.communicate("")
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("error: ")
    expect = case["expect"].replace("HOLDER", "|".join(str(p.pid) for p in holders) or "HOLDER")
    assert re.search(expect, err), f"{err!r} does not match {expect!r}"
    # A case that fails while writing (a full disk) may leave the folder it was writing, never a temp file.
    written = tuple(Path(w) for w in case.get("written", []))
    after = {p: b for p, b in snapshot(tmp_path).items() if not any(p == w or w in p.parents for w in written)}
    assert after == before, "nothing is written, changed or deleted"
    assert not [p for p in tmp_path.rglob("*.tmp")], "no temporary file is left"
    assert not (tmp_path / "pwned").exists()
