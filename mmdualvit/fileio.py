"""Atomic local writes (a file appears complete under its final name, or not at all) and the work-dir lock.

Used by the checkpoint converters and the download cache (:mod:`mmdualvit.checkpoint`), the ONNX export and, through
:class:`AtomicLocalBackend`, the training checkpoints of :class:`mmdualvit.engine.PortableCheckpointHook`;
:class:`mmdualvit.engine.StrictRunner` holds :func:`lock_work_dir`'s lock while it trains.
"""
import glob
import json
import os
import os.path as osp
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Union

import filelock
from mmengine.fileio import LocalBackend, register_backend

ATOMIC_BACKEND = 'mmdualvit_atomic_local'
# A temporary is '.<final name>.<random hex>.mmdualvit-tmp': hidden, next to its target (so the rename stays on one
# file system) and recognisable as ours when a killed writer left it behind.
TMP_SUFFIX = '.mmdualvit-tmp'
LOCK_NAME = '.mmdualvit-train.lock'  # the flock
HOLDER_NAME = '.mmdualvit-train.holder'  # who holds it (JSON), for the message a second training gets
_HELD: Dict[str, list] = {}  # lock path -> [lock, depth]: the work-dir locks this process holds


class WorkDirLockedError(RuntimeError):
    """The lock of a work dir cannot be taken: another process holds it, or the path cannot hold one."""


@contextmanager
def atomic_open(filepath: Union[str, Path]) -> Iterator[BinaryIO]:
    """Open a temporary next to ``filepath`` for binary writing; on success flush it to disk and rename it into place.

    Readers see the old file or the complete new one, never a truncated one; if the body raises, the temporary is
    removed. The file is created with mode 0666 filtered by the process umask, exactly as a plain
    ``open(filepath, 'wb')`` would (``tempfile.mkstemp`` would give 0600, unreadable for colleagues on a shared
    machine).
    """
    directory = osp.dirname(osp.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    tmp = osp.join(directory, f'.{osp.basename(filepath)}.{uuid.uuid4().hex}{TMP_SUFFIX}')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, 'wb') as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write(data: bytes, filepath: Union[str, Path]) -> None:
    """Write ``data`` to ``filepath`` through :func:`atomic_open`."""
    with atomic_open(filepath) as f:
        f.write(data)


def remove_temporaries(directory: Union[str, Path], name: str = '') -> List[str]:
    """Delete the temporaries of :func:`atomic_open` in ``directory`` (of file ``name`` only, if given): what writers
    killed half-way (SIGKILL, out of memory) left behind. Only for a caller holding the lock every writer there holds
    (the work-dir lock, a download's lock), so no live write loses its file. Returns the removed paths."""
    removed = []
    for path in sorted(glob.glob(osp.join(glob.escape(str(directory)), f'.{glob.escape(name)}*{TMP_SUFFIX}'))):
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def unwritable_reason(directory: Union[str, Path]) -> Optional[str]:
    """Why files cannot be written into ``directory`` (created if missing), or None: checked before any work, so
    that an output path fails in a second, not after the work it was to hold."""
    existing = osp.abspath(directory)
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    if not osp.isdir(existing):
        return f'{existing!r} is a file, not a directory'
    if not os.access(existing, os.W_OK | os.X_OK):
        return f'{existing!r} is not writable'
    return None


def lock_work_dir(work_dir: Union[str, Path]) -> filelock.BaseFileLock:
    """Take the training lock of ``work_dir``: filelock's ``flock`` on ``.mmdualvit-train.lock``, which the kernel
    releases however the process ends (so no lock is ever stale), and who holds it in ``.mmdualvit-train.holder``.
    Release it with :func:`unlock_work_dir`. A process that holds it already takes it again (``tools/train.py``
    takes it before the runner is built, the runner's ``train`` once more); the last release frees it.

    Across machines it excludes as far as the work dir's file system implements ``flock`` for all its clients (local
    disks, NFSv4, Lustre mounted with ``-o flock``; not Lustre's ``localflock``).

    Raises:
        WorkDirLockedError: another process holds the lock (naming it), or the work dir or its lock files are not
            what they should be.
    """
    path = osp.abspath(osp.join(work_dir, LOCK_NAME))
    if path in _HELD:
        _HELD[path][1] += 1
        return _HELD[path][0]
    reason = unwritable_reason(work_dir)
    if reason is not None:
        raise WorkDirLockedError(f'cannot train in {work_dir}: {reason}; give another --work-dir.')
    for own in (path, osp.join(work_dir, HOLDER_NAME)):
        odd = 'a symbolic link' if osp.islink(own) else 'a directory' if osp.isdir(own) else None
        if odd is not None:  # never created by mmdualvit
            raise WorkDirLockedError(f'{own} is {odd}, not a lock file of mmdualvit, so no training can take this '
                                     f'work dir\'s lock. If no training uses {work_dir}, remove it (rm -r {own}) and '
                                     f'start again; or train in another work dir (--work-dir).')
    os.makedirs(work_dir, exist_ok=True)
    lock = filelock.FileLock(path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise WorkDirLockedError(_held_message(work_dir, path)) from None
    atomic_write(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), since=time.strftime('%Y-%m-%d %H:%M:%S'),
                                 command=' '.join(sys.argv))).encode(), osp.join(work_dir, HOLDER_NAME))
    _HELD[path] = [lock, 1]
    return lock


def unlock_work_dir(lock: filelock.BaseFileLock) -> None:
    """Release a lock of :func:`lock_work_dir` (the lock file stays: removing a locked path splits its waiters)."""
    held = _HELD[lock.lock_file]
    held[1] -= 1
    if held[1]:
        return
    del _HELD[lock.lock_file]
    holder = osp.join(osp.dirname(lock.lock_file), HOLDER_NAME)
    if osp.exists(holder):
        os.remove(holder)
    lock.release()


def _held_message(work_dir: Union[str, Path], path: str) -> str:
    try:
        with open(osp.join(work_dir, HOLDER_NAME)) as f:
            text = f.read()
        holder = json.loads(text)
        where = 'this machine' if holder['host'] == socket.gethostname() else f'machine {holder["host"]!r}'
        who = f'process {holder["pid"]} on {where} (since {holder["since"]}: {holder["command"]})'
    except FileNotFoundError:
        who = 'a process that has not yet said which'
    except (ValueError, TypeError, KeyError):
        who = f'an unknown process (its {HOLDER_NAME} reads {text[:200]!r})'
    return (f'{work_dir} is in use by {who}. Two trainings in one work dir overwrite each other\'s checkpoints: wait '
            f'for it to finish, or train in another work dir (--work-dir). The lock is released when that process '
            f'ends, however it ends; `lsof {path}` shows the process holding it.')


class AtomicLocalBackend(LocalBackend):
    """:class:`~mmengine.fileio.LocalBackend` whose ``put``/``put_text`` go through :func:`atomic_write`.

    A process killed while saving leaves the previous file, never a truncated one. Select it with
    ``default_hooks.checkpoint.backend_args=dict(backend='mmdualvit_atomic_local')`` (our configs do).
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        atomic_write(obj.encode(encoding), filepath)


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)
