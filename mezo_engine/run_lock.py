"""One run per output folder: a lock file ``<output_dir>/.run.lock`` naming the host and pid of the job holding it.

Two identical runs started together would share their checkpoint folder, and the second crashes when the first
rotates a checkpoint away. So a job takes the lock (rank 0 only under torchrun) before any data or model loads and
removes it when it ends, also after an error or a stop signal (``release_all`` from the apps' ``finally``).

The holder keeps the file open under ``fcntl.flock``, which the kernel drops when the process dies however it dies
(SIGKILL, OOM killer): a lock file whose flock is free is stale and is taken over. So is one that names a dead pid
on this host. A file whose flock is taken, or that names a live pid on this host, refuses the run with one line
naming the holder's host, pid and the folder. A stale file from another host (a requeued job on a new node) is
taken over with a warning when its flock is free; on a file system whose flock does not reach across hosts that
is the only case the lock cannot see.

Standard library only.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from mezo_engine.results import ResultPathError

LOCK_NAME = ".run.lock"
logger = logging.getLogger(__name__)
_HELD: dict[Path, tuple[int, bool]] = {}  # lock path -> (open descriptor, whether we created its folder)


class OutputLockError(ResultPathError):
    """Another live run holds the output folder (or the folder cannot hold a lock); one line for the user."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def _holder(fd: int) -> dict:
    """The host and pid a lock file names ({} for an empty or unreadable one)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _live_elsewhere(holder: dict) -> bool:
    """Whether ``holder`` is a process other than this one that is alive on this host."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    return holder["pid"] != os.getpid() and pid_alive(holder["pid"])


def _refusal(holder: dict, folder: Path) -> OutputLockError:
    return OutputLockError(f"another run (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}) is using "
                           f"the output folder {folder}; wait for it, give another --output_dir, or remove "
                           f"{folder / LOCK_NAME} if that process is gone")


def _open_locked(path: Path) -> int:
    """A descriptor of ``path`` under our flock, still the file at ``path`` (not one a leaving holder unlinked
    meanwhile); raises BlockingIOError while another process holds the flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if path.exists() and os.fstat(fd).st_ino == path.stat().st_ino:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def acquire(folder: str | Path) -> None:
    """Take the lock of ``folder`` (created if missing) for this process, or raise OutputLockError."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    if path in _HELD:
        return
    try:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(path)
    except BlockingIOError:
        raise _refusal(_read(path), folder) from None
    except OSError as err:
        raise OutputLockError(f"cannot lock the output folder {folder} (--output_dir): {err}") from err
    _take(fd, path, created)


def _take(fd: int, path: Path, created: bool) -> None:
    """Write our host and pid into the flocked ``fd`` unless it names another live process on this host."""
    holder = _holder(fd)
    if _live_elsewhere(holder):
        os.close(fd)
        raise _refusal(holder, path.parent)
    if holder.get("pid") not in (None, os.getpid()):
        logger.warning("taking over the stale lock of %s (host %s, pid %s, no longer running)", path.parent,
                       holder.get("host"), holder.get("pid"))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode(), 0)
    _HELD[path] = (fd, created)


def _read(path: Path) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _holder(fd)
    finally:
        os.close(fd)


def release_all() -> None:
    """Remove every lock this process holds (and a folder it created that is left empty)."""
    for path, (fd, created) in list(_HELD.items()):
        path.unlink(missing_ok=True)
        os.close(fd)
        del _HELD[path]
        if created and path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()
