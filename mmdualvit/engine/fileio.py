"""A local file backend whose writes are atomic, for checkpoints that survive being killed mid-write."""
import os
import os.path as osp
import tempfile
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend

ATOMIC_BACKEND = 'mmdualvit_atomic_local'


class AtomicLocalBackend(LocalBackend):
    """:class:`~mmengine.fileio.LocalBackend` that writes to a temporary file and renames it into place.

    A process killed while saving (SIGKILL, out of memory, a preempted node) leaves the previous file, never a
    truncated one, so ``--resume`` cannot pick up a half-written checkpoint; ``last_checkpoint`` is written the same
    way. Select it with ``default_hooks.checkpoint.backend_args=dict(backend='mmdualvit_atomic_local')`` (our configs
    do).
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        self._atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        self._atomic_write(obj.encode(encoding), filepath)

    @staticmethod
    def _atomic_write(data: bytes, filepath: Union[str, Path]) -> None:
        directory = osp.dirname(osp.abspath(filepath))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + osp.basename(filepath) + '.', suffix='.tmp')
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


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)
