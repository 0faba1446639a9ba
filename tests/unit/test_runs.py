"""Run folders: the stage lock across real processes, stale locks, completion markers, atomic writes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prefopt.runs import (
    LOCK_NAME,
    RunLock,
    RunLockedError,
    StaleLockError,
    atomic_write_json,
    atomic_write_text,
    is_complete,
    mark_complete,
    read_complete,
    stage_dir,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")

# A child that takes the lock, says so, then waits for a line on stdin before releasing it.
HOLDER = textwrap.dedent(
    """
    import sys
    from prefopt.runs import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)
# Racers: the winner holds the lock until told to go, so the count does not depend on start-up timing.
RACER = textwrap.dedent(
    """
    import sys
    from prefopt.runs import RunLock
    lock = RunLock(sys.argv[1])
    try:
        lock.acquire()
    except Exception as err:
        print("refused", type(err).__name__, flush=True)
    else:
        print("locked", flush=True)
        sys.stdin.readline()
        lock.release()
    """
)
# A child that tries to take the lock and reports what happened.
TRIER = textwrap.dedent(
    """
    import sys
    from prefopt.runs import RunLock, RunLockedError
    try:
        with RunLock(sys.argv[1]):
            print("acquired")
    except RunLockedError as err:
        print(type(err).__name__, err.holder.pid if err.holder else None, err)
    """
)


def _python(code: str, folder: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-c", code, str(folder)]
    return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, **kw)


def _start_holder(folder: Path) -> subprocess.Popen:
    child = _python(HOLDER, folder, stdin=subprocess.PIPE)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_process_is_refused_while_first_holds_the_lock(tmp_path):
    folder = tmp_path / "run" / "sft"
    with RunLock(folder) as lock:
        assert lock.info is not None and lock.info.pid == os.getpid()
        holder = json.loads((folder / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        out = _python(TRIER, folder).communicate(timeout=60)[0]
        assert out.startswith(f"RunLockedError {os.getpid()} ")
        assert "in use by a running process" in out
    assert not (folder / LOCK_NAME).exists()  # released on exit
    assert _python(TRIER, folder).communicate(timeout=60)[0].strip() == "acquired"


def test_racing_processes_exactly_one_wins(tmp_path):
    children = [_python(RACER, tmp_path, stdin=subprocess.PIPE) for _ in range(4)]
    firsts = [c.stdout.readline().strip() for c in children]
    for c in children:
        c.communicate("\n", timeout=60)
    assert sorted(firsts) == ["locked"] + ["refused RunLockedError"] * 3
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_held_by_another_process_names_its_pid_and_is_free_after_it_exits(tmp_path):
    child = _start_holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as info, RunLock(tmp_path):
            pass
        assert not isinstance(info.value, StaleLockError)
        assert info.value.holder.pid == child.pid
        assert f"pid {child.pid}" in str(info.value)
        # force never takes a lock from a live process
        with pytest.raises(RunLockedError), RunLock(tmp_path, force=True):
            pass
    finally:
        child.communicate("\n", timeout=60)
    assert child.returncode == 0
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).exists()


def test_lock_of_a_killed_process_is_reported_as_stale_then_cleared_by_force(tmp_path):
    child = _start_holder(tmp_path)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert (tmp_path / LOCK_NAME).exists()  # the dead process could not clean up
    with pytest.raises(StaleLockError) as info, RunLock(tmp_path):
        pass
    message = str(info.value)
    assert f"pid {child.pid}" in message and "died" in message and "force=True" in message
    assert str(tmp_path / LOCK_NAME) in message
    with RunLock(tmp_path, force=True) as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert lock.info.pid == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_written_lock_with_nonexistent_pid_is_stale(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)  # reaped: its pid names no process now
    lock = {"pid": gone.pid, "host": socket.gethostname(), "started": time.time() - 60, "token": "x"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(lock))
    with pytest.raises(StaleLockError, match=f"pid {gone.pid}"), RunLock(tmp_path):
        pass
    assert (tmp_path / LOCK_NAME).exists()  # reported, not stolen


def test_pid_reused_by_a_newer_process_counts_as_stale(tmp_path):
    # A live pid (our parent), but the lock predates its start: a container restart reusing the pid.
    lock = {"pid": os.getppid(), "host": socket.gethostname(), "started": 1_000_000.0, "token": "x"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(lock))
    with pytest.raises(StaleLockError), RunLock(tmp_path):
        pass


def test_lock_from_another_host_or_corrupt_is_refused_unless_forced(tmp_path):
    lock = {"pid": 1, "host": "some-other-node", "started": time.time(), "token": "x"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(lock))
    with pytest.raises(RunLockedError, match="some-other-node") as info, RunLock(tmp_path):
        pass
    assert not isinstance(info.value, StaleLockError)
    (tmp_path / LOCK_NAME).write_text("")  # died between creating and writing the file
    with pytest.raises(RunLockedError, match="empty or unreadable"), RunLock(tmp_path):
        pass
    with RunLock(tmp_path, force=True):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_lock_twice_in_one_process_is_refused(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunLockedError, match="already locked by this process"):
        RunLock(tmp_path).acquire()


def test_stage_dir_and_completion_marker(tmp_path):
    run = tmp_path / "runs" / "demo"
    sft = stage_dir(run, "sft")
    assert sft == run / "sft" and not sft.exists()
    with pytest.raises(ValueError, match="stage name"):
        stage_dir(run, "../elsewhere")
    sft.mkdir(parents=True)
    assert not is_complete(sft) and read_complete(sft) is None
    mark_complete(sft, {"steps": 120, "model": "model/"})
    assert is_complete(sft)
    done = read_complete(sft)
    assert done["steps"] == 120 and done["model"] == "model/" and "completed_at" in done


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "a: 1\n")
    atomic_write_text(target, "a: 2\n")
    assert target.read_text() == "a: 2\n"
    atomic_write_json(tmp_path / "x.json", {"k": [1, 2]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"k": [1, 2]}
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"k": object()})
    assert json.loads((tmp_path / "x.json").read_text()) == {"k": [1, 2]}  # untouched on failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "x.json"]
