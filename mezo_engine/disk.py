"""Failed writes: telling a full, read-only or unwritable disk from other errors, and a checkpoint cut short.

A full disk reaches a run in three disguises: an ``OSError`` with ``errno`` ENOSPC (JSON files), safetensors'
``SafetensorError`` ("No space left on device (os error 28)") and torch.save's ``RuntimeError`` ("unexpected pos
... vs ...", with no reason at all). So a failed checkpoint is recognised by where the run stands rather than by the
exception alone: the folder of the step being saved exists without ``run_state.pt``, which is written last
(``checkpoint.RunStateCallback.on_save``), or the error names a write errno. The reason given is the errno's text
or, failing that, what a small probe write into the folder answers now.

Standard library only.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

# Errors of the file system rather than of the program: no space or quota, read-only, no permission, I/O.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                          errno.EFBIG})
PROBE_BYTES = 1 << 20  # a probe write of 1 MiB: what is left on a disk a checkpoint just filled


def errno_reason(err: BaseException) -> str | None:
    """The text of the first write errno (``WRITE_ERRNOS``) in ``err`` or the exceptions it came from, or the
    safetensors wording of a full disk; None when neither is there."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            return err.strerror or os.strerror(err.errno)
        if "os error 28" in str(err):
            return os.strerror(errno.ENOSPC)
        err = err.__cause__ or err.__context__
    return None


def probe_write(folder: str | Path, size: int = PROBE_BYTES) -> str | None:
    """Why ``size`` bytes cannot be written (and synced) into ``folder`` now, or None when they can."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return err.strerror or str(err)
    return None


def failed_checkpoint(err: BaseException, output_dir: str | Path, step: int, marker: str) -> str | None:
    """The one-line message for ``err`` raised while training when it is a checkpoint that could not be written
    (``checkpoint-<step>`` in ``output_dir`` left without ``marker``, the file written last, or a write errno),
    after removing that incomplete folder so that ``--resume_from_checkpoint auto`` takes the one before; None
    when ``err`` is something else (the caller re-raises it)."""
    folder = Path(output_dir) / f"checkpoint-{step}"
    partial = folder.is_dir() and not (folder / marker).exists()
    reason = errno_reason(err) or (probe_write(output_dir) if partial else None)
    if reason is None:
        return None
    if partial:
        shutil.rmtree(folder, ignore_errors=True)
    return (f"cannot write checkpoint-{step} in {output_dir} ({reason})" + ("; removed what was written of it"
            if partial else "") + "; make room and re-run with --resume_from_checkpoint auto to continue from the "
            "latest complete checkpoint")
