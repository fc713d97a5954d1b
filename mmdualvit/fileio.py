"""Atomic local writes: a file appears complete under its final name, or not at all.

Used by the checkpoint converters (:mod:`mmdualvit.checkpoint`) and, through :class:`AtomicLocalBackend`, by the
training checkpoints of :class:`mmdualvit.engine.PortableCheckpointHook`.
"""
import glob
import os
import os.path as osp
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, List, Union

from mmengine.fileio import LocalBackend, register_backend

ATOMIC_BACKEND = 'mmdualvit_atomic_local'
# A temporary is '.<final name>.<random hex>.mmdualvit-tmp': hidden, next to its target (so the rename stays on one
# file system), and recognisable as ours when an interrupted run left it behind.
TMP_SUFFIX = '.mmdualvit-tmp'


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


def remove_stale_temporaries(directory: Union[str, Path]) -> List[str]:
    """Delete the temporaries that writes killed half-way (SIGKILL, out of memory) left in ``directory``.

    Call it only when no write to ``directory`` is in flight, i.e. when a run starts. Returns the removed paths.
    """
    stale = sorted(glob.glob(osp.join(glob.escape(str(directory)), f'.*{TMP_SUFFIX}')))
    for path in stale:
        os.remove(path)
    return stale


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
