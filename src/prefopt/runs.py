"""Run folders: stage paths, a per-stage lock, completion markers and atomic file writes.

A run lives in ``runs/<name>/`` with one folder per stage (``base/``, ``sft/``, ``reward/``, ``ppo/``,
``eval/``). A stage holds :class:`RunLock` on its folder while it writes there, and writes ``DONE.json``
(:func:`mark_complete`) as its very last act, so a pipeline can skip finished stages and resume partial ones.

This module imports no torch: it is cheap to import from the CLI and from helper processes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

STAGES = ("base", "sft", "reward", "ppo", "eval")
"""The stage folders the pipeline writes (see DESIGN.md, "What the user does")."""

LOCK_NAME = "LOCK.json"
DONE_NAME = "DONE.json"

_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ----------------------------------------------------------------------------- atomic writes


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename or a new file in it) to disk. No-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one.

    The text goes to a temporary file in the same folder (same filesystem, so the rename is atomic),
    is fsynced, renamed over ``path``, and the folder is fsynced so the rename survives a power loss.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON. Fails before touching ``path`` if
    ``obj`` is not JSON-serialisable."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ----------------------------------------------------------------------------- stage folders


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    """The folder of ``stage`` inside ``run_dir`` (not created: readers of earlier stages use this too)."""
    if not _STAGE_NAME.match(stage):
        raise ValueError(f"bad stage name {stage!r}: expected a plain folder name such as one of {STAGES}")
    return Path(run_dir) / stage


def mark_complete(stage_path: str | Path, info: dict[str, Any]) -> None:
    """Write ``DONE.json`` (``info`` plus ``completed_at``) atomically. Call it after every other output."""
    atomic_write_json(Path(stage_path) / DONE_NAME, {**info, "completed_at": _now_iso()})


def is_complete(stage_path: str | Path) -> bool:
    """True when the stage wrote its ``DONE.json`` (so its outputs are all in place)."""
    return read_complete(stage_path) is not None


def read_complete(stage_path: str | Path) -> dict[str, Any] | None:
    """The ``info`` a finished stage passed to :func:`mark_complete`, or None when it did not finish."""
    try:
        return json.loads((Path(stage_path) / DONE_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------- the lock


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock. ``started`` is a unix time; ``token`` tells our own lock from a successor's."""

    pid: int
    host: str
    started: float
    token: str

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on host {self.host!r}, started {when}"


class RunLockedError(RuntimeError):
    """Another process holds the stage folder's lock (or may hold it: see :class:`StaleLockError`)."""

    def __init__(self, message: str, lock_path: Path, holder: LockInfo | None):
        super().__init__(message)
        self.lock_path = lock_path
        self.holder = holder


class StaleLockError(RunLockedError):
    """The lock was left by a process that is gone: an earlier run died. Never taken over silently."""


class RunLock:
    """Exclusive lock on a stage folder, as a context manager::

        with RunLock(stage_dir(run, "sft")):
            ...  # train, checkpoint, write outputs

    The lock file ``LOCK.json`` (pid, host, start time) is created with ``O_CREAT | O_EXCL``, so of two
    processes racing for the folder exactly one wins. The loser gets :class:`RunLockedError` naming the
    holder. A lock left by a dead process on this host raises :class:`StaleLockError` with instructions;
    ``force=True`` takes over any lock that is not provably held by a live process on this host (a stale
    one, a corrupt one, or one from another host, which we cannot check). Only the main process of a
    distributed job should take the lock.
    """

    def __init__(self, path: str | Path, force: bool = False):
        self.dir = Path(path)
        self.path = self.dir / LOCK_NAME
        self.force = force
        self.info: LockInfo | None = None

    def acquire(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        me = LockInfo(os.getpid(), socket.gethostname(), time.time(), secrets.token_hex(8))
        for _ in range(2):  # a second try only after breaking a lock with force=True
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_break()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(me), f)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self.dir)
            self.info = me
            return
        raise RunLockedError(f"could not take {self.path}: another process took it first", self.path, None)

    def release(self) -> None:
        """Remove the lock file, but only if it is still ours (``force`` may have passed it on)."""
        if self.info is not None and _read_lock(self.path) == self.info:
            self.path.unlink(missing_ok=True)
        self.info = None

    def _refuse_or_break(self) -> None:
        holder = _read_lock(self.path)
        alive = holder is not None and holder.host == socket.gethostname() and _pid_alive(holder)
        if alive or not self.force:
            raise _locked_error(self.path, holder)
        # force=True and the holder is dead or unverifiable: break the lock, then race for it again.
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_lock(path: Path) -> LockInfo | None:
    """The lock's holder, or None when the file is gone, empty (being written) or corrupt."""
    try:
        return LockInfo(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _pid_alive(holder: LockInfo) -> bool:
    """Whether the holder's process still runs on this host. A pid reused by a process that started
    after the lock was written does not count (containers restart with the same small pids)."""
    try:
        created = psutil.Process(holder.pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # e.g. access denied: it exists, assume it is the holder
        return True
    return created <= holder.started + 1.0  # 1 s slack: create_time is rounded


def _locked_error(path: Path, holder: LockInfo | None) -> RunLockedError:
    clear = f"pass force=True (CLI: --force) or delete {path}"
    if holder is None:
        return RunLockedError(
            f"{path.parent} is locked but the lock file is empty or unreadable: another process may be "
            f"starting right now, or one died while taking the lock. If no run uses this folder, {clear}.",
            path,
            None,
        )
    if holder.host != socket.gethostname():
        return RunLockedError(
            f"{path.parent} is locked by {holder.describe()}; this host cannot tell whether that process "
            f"still runs. If it does not, {clear}.",
            path,
            holder,
        )
    if holder.pid == os.getpid():
        return RunLockedError(f"{path.parent} is already locked by this process", path, holder)
    if _pid_alive(holder):
        return RunLockedError(
            f"{path.parent} is in use by a running process: {holder.describe()}. Wait for it to finish "
            f"or stop it (kill {holder.pid}).",
            path,
            holder,
        )
    return StaleLockError(
        f"a previous run in {path.parent} died without releasing its lock ({holder.describe()}, no "
        f"longer running); its outputs may be partial. To run there again (a stage resumes from its last "
        f"checkpoint), {clear}.",
        path,
        holder,
    )
