"""Faults that end a run: each becomes one line saying what failed, where, and what still holds.

train.py prints that line (no traceback) and exits non-zero; restarting resumes from the newest intact
checkpoint.
"""
import errno
import re
import shutil
from pathlib import Path
from typing import Optional

import torch.distributed as dist

# What a write to a full, read-only or forbidden folder raises.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class RunStopped(RuntimeError):
    """A fault the run cannot continue after; the message is the one line to show."""


class NonFiniteTraining(RunStopped):
    """The loss or gradient norm stayed non-finite, or the weights became non-finite."""


class CheckpointWriteError(RunStopped):
    """A checkpoint could not be written; the previous one is intact."""


class CheckpointLoadError(RunStopped):
    """A checkpoint to resume from could not be loaded."""


def size_text(num_bytes: int) -> str:
    for unit, scale in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if num_bytes >= scale:
            return f'{num_bytes / scale:.1f} {unit}'
    return f'{num_bytes} bytes'


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f'{type(error).__name__}: {text[0] if text else ""}'.rstrip(': ')


def free_space(path: Path) -> int:
    """Free bytes on the disk holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def drop_frames(error: BaseException) -> BaseException:
    """``error`` without the frames of it and of the errors it arose from: they may hold a half-written file
    open, whose space would stay taken after its deletion."""
    chained = error
    while chained is not None:
        chained.__traceback__ = None
        chained = chained.__context__
    return error


def system_cause(error: OSError) -> str:
    return f'{error.filename}: {error.strerror}' if error.filename else str(error.strerror)


def write_cause(error: BaseException, *, free: int, needed: Optional[int]) -> str:
    """Why a write failed, in words: the system's reason, or a full disk when the writer hid it."""
    if isinstance(error, OSError) and error.errno:
        return system_cause(error)
    if free == 0 or (needed is not None and free < needed):  # torch.save says "unexpected pos ..." then
        return f'the disk is full ({first_line(error)})'
    return first_line(error)


def collective_failure(error: BaseException) -> Optional[str]:
    """One line for a failed collective with the other processes (one died or hung), else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    text = str(error)
    if not isinstance(error, dist.DistError) and not re.search(r'gloo|nccl', text, re.IGNORECASE):
        return None
    cause = re.sub(r'^\[[^\]]*\]\s*', '', text).split('. ')[0].strip()  # drop the source location
    return (f'process {dist.get_rank()} of {dist.get_world_size()} lost the others ({cause}): one of them died or '
            f'did not answer within trainer.fault.collective_timeout; start them all again to resume from the '
            f'newest checkpoint')


def fault_message(error: BaseException) -> Optional[str]:
    """The one line that ends a run for a fault it expects; None for anything else (shown with its traceback)."""
    if isinstance(error, RunStopped):  # raised in a DataLoader worker, its message ends with the original line
        return str(error).strip().splitlines()[-1].split(f'{type(error).__name__}: ', 1)[-1]
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        space = f' ({size_text(free_space(error.filename or "."))} free there)' if full else ''
        return f'{system_cause(error)}{space}'
    return collective_failure(error)
