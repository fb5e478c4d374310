"""One live process per run folder (runs/lock.py): a second run on a folder that a live run holds is
refused naming the holder; a killed holder's lock is taken over, and says so (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from groupdistil.errors import UserError
from groupdistil.runs import lock
from groupdistil.runs.lock import RunLock, check_unlocked, lock_path

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = ["--dataset", "spurious-digits", "--model", "mlp-small", "--epochs", "2", "--quiet"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUPDISTIL_")}
    return {**env, "PYTHONPATH": SRC, **extra}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groupdistil", *args], capture_output=True, text=True,
                          env=_env(), timeout=300)


def paused_run(*args: str, at: str) -> subprocess.Popen:
    """A real run, alive and waiting at fault point ``at`` (faults.py) until a signal comes."""
    p = subprocess.Popen([sys.executable, "-m", "groupdistil", *args], stderr=subprocess.PIPE, text=True,
                         env=_env(GROUPDISTIL_PAUSE_AT=at))
    assert p.stderr is not None
    for line in p.stderr:
        if line.startswith("paused at"):
            return p
    raise AssertionError(f"the run ended (exit {p.wait()}) before {at}")


@pytest.mark.slow
def test_a_second_run_on_a_live_runs_folder_is_refused_until_the_first_is_killed(tmp_path):
    out = tmp_path / "run"
    first = paused_run("train", *FAST, "--out", str(out), at="step:20")  # in epoch 2: last.pt exists
    try:
        before = snapshot(tmp_path)
        for extra in (["--resume"], ["--force"], [], ["--resume", "--force"]):
            r = cli("train", *FAST, "--out", str(out), *extra)
            assert r.returncode == 2, (extra, r.stderr)
            err = r.stderr.strip()
            assert err.count("\n") == 0 and "Traceback" not in err, err
            assert f"in use by another run (PID {first.pid} on host {socket.gethostname()}" in err, err
        # Refused before anything was read into or written to the folder. The lock file is the live run's:
        # its heartbeat rewrites it every 30 s, however long this loop takes on a busy machine.
        lock = lock_path(out).relative_to(tmp_path)
        after = snapshot(tmp_path)
        assert {k: v for k, v in after.items() if k != lock} == {k: v for k, v in before.items() if k != lock}
        assert f'"pid": {first.pid}' in lock_path(out).read_text()  # still the live run's record
    finally:
        first.send_signal(signal.SIGKILL)  # as a pre-empted node or the OOM killer would
        first.wait()
    assert lock_path(out).exists()  # a kill leaves the lock file, but the kernel lock died with the process
    r = cli("train", *FAST, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert f"names PID {first.pid} on host {socket.gethostname()}" in r.stderr and "which has ended" in r.stderr
    assert (out / "final.json").is_file() and not lock_path(out).exists()  # removed by the run that ended


def _stale_file(path: Path, host: str, age_s: float, pid: int = 4242) -> None:
    path.write_text(json.dumps({"pid": pid, "host": host, "started": "2026-01-01T00:00:00Z"}) + "\n")
    t = time.time() - age_s
    os.utime(path, (t, t))


def test_a_lock_of_another_host_is_trusted_until_its_heartbeat_is_old(tmp_path):
    out = tmp_path / "run"
    # flock may not reach across machines on a shared file system: a fresh record of another host wins.
    _stale_file(lock_path(out), "node-elsewhere", age_s=20)
    with pytest.raises(UserError, match=r"PID 4242 on host node-elsewhere.*heartbeat is 2\d s old"):
        check_unlocked(out)
    with pytest.raises(UserError, match="in use by another run"):
        RunLock.acquire(out)
    # Older than the timeout: that run has ended; taken over, with a warning naming it.
    _stale_file(lock_path(out), "node-elsewhere", age_s=lock.STALE_AFTER_S + 60)
    check_unlocked(out)
    held = RunLock.acquire(out)
    try:
        assert held.notice is not None and "node-elsewhere" in held.notice and "taking it over" in held.notice
        record = json.loads(lock_path(out).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    finally:
        held.release()
    assert not lock_path(out).exists()


def test_a_dead_process_of_this_host_leaves_a_stale_lock_that_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _stale_file(lock_path(tmp_path / "run"), socket.gethostname(), age_s=1, pid=int(dead.stdout))
    held = RunLock.acquire(tmp_path / "run")
    try:
        assert held.notice is not None and f"PID {dead.stdout.strip()}" in held.notice
    finally:
        held.release()


def test_a_held_lock_refuses_another_process_and_forked_children_do_not_keep_it(tmp_path):
    out = tmp_path / "run"
    held = RunLock.acquire(out)
    probe = [sys.executable, "-c", "import sys; from groupdistil.runs.lock import check_unlocked; "
             "check_unlocked(sys.argv[1])", str(out)]
    r = subprocess.run(probe, capture_output=True, text=True, env=_env())
    assert r.returncode != 0 and f"PID {os.getpid()}" in r.stderr
    child = os.fork()  # a DataLoader worker: it must not hold the run's lock beyond the run
    if child == 0:
        time.sleep(5)
        os._exit(0)
    try:
        held.release()
        assert subprocess.run(probe, capture_output=True, text=True, env=_env()).returncode == 0
        again = RunLock.acquire(out)  # while the forked child still lives
        again.release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_the_lock_lives_beside_the_folder_and_one_folder_has_one_lock(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert lock_path(tmp_path / "link") == lock_path(tmp_path / "real") == tmp_path / ".real.lock"
    held = RunLock.acquire(tmp_path / "real")
    try:  # another spelling of the folder, in another process
        r = subprocess.run([sys.executable, "-c", "import sys; from groupdistil.runs.lock import check_unlocked; "
                            "check_unlocked(sys.argv[1])", str(tmp_path / "link")], env=_env(), capture_output=True,
                           text=True)
        assert r.returncode != 0 and "in use by another run" in r.stderr
    finally:
        held.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
