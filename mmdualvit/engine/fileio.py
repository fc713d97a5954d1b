"""A local file backend whose writes are atomic, for checkpoints that survive being killed mid-write."""
import glob
import os
import os.path as osp
import uuid
from pathlib import Path
from typing import List, Union

from mmengine.fileio import LocalBackend, register_backend

ATOMIC_BACKEND = 'mmdualvit_atomic_local'
# A temporary is '.<final name>.<random hex>.mmdualvit-tmp': hidden, next to its target (so the rename stays on one
# file system), and recognisable as ours when an interrupted run left it behind.
TMP_SUFFIX = '.mmdualvit-tmp'


def atomic_write(data: bytes, filepath: Union[str, Path]) -> None:
    """Write ``data`` to a temporary next to ``filepath``, flush it to disk, then rename it into place.

    Readers see the old file or the complete new one, never a truncated one. The file is created with mode 0666
    filtered by the process umask, exactly as a plain ``open(filepath, 'wb')`` would (``tempfile.mkstemp`` would
    give 0600, unreadable for colleagues on a shared machine).
    """
    directory = osp.dirname(osp.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    tmp = osp.join(directory, f'.{osp.basename(filepath)}.{uuid.uuid4().hex}{TMP_SUFFIX}')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


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
