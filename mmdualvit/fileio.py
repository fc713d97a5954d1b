"""Atomic local writes (a file appears complete under its final name, or not at all) and the work-dir lock.

Used by the checkpoint converters (:mod:`mmdualvit.checkpoint`) and, through :class:`AtomicLocalBackend`, by the
training checkpoints of :class:`mmdualvit.engine.PortableCheckpointHook`; :class:`mmdualvit.engine.StrictRunner`
takes the lock of :func:`acquire_lock` for a training and cleans up with :func:`remove_stale_temporaries`.
"""
import glob
import hashlib
import json
import os
import os.path as osp
import re
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Union

from mmengine.fileio import LocalBackend, register_backend

ATOMIC_BACKEND = 'mmdualvit_atomic_local'
# A temporary is '.<final name>.<writer>.<random hex>.mmdualvit-tmp': hidden, next to its target (so the rename stays
# on one file system), recognisable as ours when an interrupted run left it behind, and naming its writer
# ('<host hash>-<pid>') so that a clean-up never removes the temporary of a write still in flight.
TMP_SUFFIX = '.mmdualvit-tmp'
_HOST = socket.gethostname()
_HOST_TAG = hashlib.sha1(_HOST.encode()).hexdigest()[:8]
_TMP_WRITER = re.compile(r'\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[0-9a-f]{32}' + re.escape(TMP_SUFFIX) + '$')
LOCK_NAME = '.mmdualvit-train.lock'


class WorkDirLockedError(RuntimeError):
    """Another live process holds the lock of a directory."""


def _process_stat(pid: int) -> Optional[List[str]]:
    """Fields 3.. of ``/proc/<pid>/stat`` (state, ..., start time at index 19), or None off Linux / if gone."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> Optional[str]:
    fields = _process_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def process_alive(pid: int, start: Optional[str] = None) -> bool:
    """Whether process ``pid`` of this machine runs (a zombie does not); with ``start`` (its start time as
    :func:`_process_start` read it), also whether it is still that process and not a later one that reuses the pid."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    fields = _process_stat(pid)
    if fields is not None and (fields[0] == 'Z' or (start is not None and len(fields) > 19 and fields[19] != start)):
        return False
    return True


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
    tmp = osp.join(directory, f'.{osp.basename(filepath)}.{_HOST_TAG}-{os.getpid()}.{uuid.uuid4().hex}{TMP_SUFFIX}')
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


def atomic_write(data: bytes, filepath: Union[str, Path]) -> None:
    """Write ``data`` to ``filepath`` through :func:`atomic_open`."""
    with atomic_open(filepath) as f:
        f.write(data)


def remove_stale_temporaries(directory: Union[str, Path]) -> List[str]:
    """Delete the temporaries that writes killed half-way (SIGKILL, out of memory) left in ``directory``.

    A temporary whose writer still runs on this machine is kept, and so is one written on another machine (whose
    processes cannot be checked from here); a temporary without a writer in its name (from an earlier mmdualvit, whose
    trainings took no lock) is removed. Returns the removed paths.
    """
    removed = []
    for path in sorted(glob.glob(osp.join(glob.escape(str(directory)), f'.*{TMP_SUFFIX}'))):
        writer = _TMP_WRITER.search(osp.basename(path))
        if writer and (writer['host'] != _HOST_TAG or process_alive(int(writer['pid']))):
            continue
        try:
            os.remove(path)
        except FileNotFoundError:  # its writer renamed it into place meanwhile
            continue
        removed.append(path)
    return removed


def _read_lock(path: str) -> Optional[dict]:
    """The holder recorded in lock file ``path``; None if there is no such file. A lock is written with one
    ``write`` right after its creation, so an empty or partial file is read again after a moment."""
    for _ in range(20):
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            if isinstance(holder, dict) and isinstance(holder.get('pid'), int):
                return holder
        except ValueError:
            pass
        time.sleep(0.05)
    return dict(pid=-1, host='?', unreadable=text[:200])


def _holder_alive(holder: dict) -> bool:
    if holder.get('unreadable') is not None or holder.get('host') != _HOST:
        return True  # cannot be checked from here
    return process_alive(holder['pid'], holder.get('start'))


def acquire_lock(path: Union[str, Path]) -> Optional[dict]:
    """Create lock file ``path`` for this process (its pid, host, start time and command line).

    A lock whose process no longer runs on this machine is stale and taken over; its holder is returned (None when
    there was no lock).

    Raises:
        WorkDirLockedError: a live process holds the lock, or one on another machine, or the file is unreadable.
    """
    path = str(path)
    mine = json.dumps(dict(pid=os.getpid(), host=_HOST, start=_process_start(os.getpid()),
                           since=time.strftime('%Y-%m-%d %H:%M:%S'), command=' '.join(sys.argv))).encode()
    stale = None
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            odd = 'a symbolic link' if osp.islink(path) else 'a directory' if osp.isdir(path) else None
            if odd is not None:  # never written by acquire_lock
                raise WorkDirLockedError(
                    f'{path} is {odd}, not a lock file of mmdualvit, so no training can take this work dir\'s lock. '
                    f'If no training uses {osp.dirname(path) or "."}, remove it (rm -r {path}) and start again; or '
                    f'train in another work dir (--work-dir).') from None
            holder = _read_lock(path)
            if holder is None:  # released meanwhile
                continue
            if _holder_alive(holder):
                raise WorkDirLockedError(_held_message(path, holder)) from None
            # Move the stale lock aside, then check it is the one judged stale (another starting process may have
            # replaced it meanwhile): a plain remove could delete that process's fresh lock.
            aside = f'{path}.{os.getpid()}.{uuid.uuid4().hex}.stale'
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            if _read_lock(aside) != holder:
                os.rename(aside, path)
                raise WorkDirLockedError(_held_message(path, _read_lock(path) or holder)) from None
            os.remove(aside)
            stale = holder
            continue
        with os.fdopen(fd, 'wb') as f:
            f.write(mine)
        return stale
    raise WorkDirLockedError(f'could not take the lock {path}: other processes keep taking and releasing it.')


def _held_message(path: str, holder: dict) -> str:
    if holder.get('unreadable') is not None:
        who = f'an unknown process (the lock file reads {holder["unreadable"]!r})'
    else:
        where = 'this machine' if holder.get('host') == _HOST else f'machine {holder.get("host")!r}'
        who = (f'process {holder["pid"]} on {where} (since {holder.get("since", "?")}: '
               f'{holder.get("command", "?")})')
    return (f'{osp.dirname(path) or "."} is in use by {who}. Two trainings in one work dir overwrite each other\'s '
            f'checkpoints: wait for it to finish, or train in another work dir (--work-dir). If that process is not '
            f'running any more, delete {path}.')


def release_lock(path: Union[str, Path]) -> None:
    """Remove lock file ``path`` if this process holds it."""
    holder = _read_lock(str(path))
    if holder is not None and holder.get('pid') == os.getpid() and holder.get('host') == _HOST:
        os.remove(path)


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
