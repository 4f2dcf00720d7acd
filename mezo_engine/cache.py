"""The project's file cache (``$MEZO_CACHE``, default ``~/.cache/mezo-xgblora``), safe for many runs at once.

A sweep starts many runs together, and on first use each of them finds the model missing from the cache. Only one
may build it: ``build_once`` takes an exclusive lock beside the entry (``fcntl.flock``), looks again, builds into
a private temporary name and renames it into place, so no run ever reads a half-written file or directory, and a
build that fails leaves nothing behind. The lock works across processes on one machine and on file systems that
honour ``flock`` (most NFS set-ups do; where one does not, the private name and the rename still keep every reader
from a partial entry, at the cost of building twice).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def cache_root() -> Path:
    return Path(os.environ.get("MEZO_CACHE", Path.home() / ".cache" / "mezo-xgblora"))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (``.<name>.lock`` beside it) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def build_once(out: Path, build: Callable[[Path], None], *, is_dir: bool) -> Path:
    """Return ``out``, first making it with ``build(tmp)`` unless it exists, under a lock shared by all processes.

    ``build`` writes a file (``is_dir=False``) or fills an existing empty directory (``is_dir=True``) at ``tmp``,
    a fresh name in ``out``'s directory; ``tmp`` is renamed to ``out`` only when ``build`` returns.
    """
    if out.exists():
        return out
    with locked(out):
        if out.exists():  # another process built it while this one waited for the lock
            return out
        if is_dir:
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        else:
            handle, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
            os.close(handle)
            tmp = Path(name)
        try:
            build(tmp)
            tmp.rename(out)
        finally:
            if tmp.exists():
                _remove(tmp)
    return out
