"""A Runner that loads checkpoints strictly and safely, and whose ``--resume`` never throws trained work away.

mmengine's :class:`~mmengine.runner.Runner` loads ``load_from`` / ``resume`` files with ``strict=False`` (a wrong or
partial file trains or evaluates random weights after a warning), reads them with torch's default ``weights_only``
(``False`` before torch 2.6), and on ``resume=True`` without ``last_checkpoint`` silently starts from iteration 0,
after which ``max_keep_ckpts`` deletes the trained checkpoints. :class:`StrictRunner` changes exactly these points.
Configs select it with ``runner_type = 'mmdualvit.StrictRunner'`` (ours do), which mmdet's, mmseg's and our tools
all honour.
"""
import os
import os.path as osp
import re
from typing import Callable, Optional, Tuple, Union

from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from ..checkpoint import CheckpointError, MissingCheckpointError, load_checkpoint_weights, read_checkpoint
from ..fileio import remove_stale_temporaries
from ..registry import RUNNERS

STRICT_KEY = 'strict_load'  # top-level config key; `--cfg-options strict_load=False` allows a partial load
TRUST_KEY = 'trust_checkpoint'  # set by --trust-checkpoint: unpickle fully (weights_only=False)
CHECK_WEIGHTS_KEY = 'check_weights'  # `--skip-weight-check` sets it False: accept NaN/Inf or non-float weights
_CHECKPOINT_NAME = re.compile(r'^(?:epoch|iter)_(\d+)\.pth$')


@RUNNERS.register_module()
class StrictRunner(Runner):
    """:class:`~mmengine.runner.Runner` whose ``load_from``, ``resume`` and test-time loading are strict and safe.

    - weights load strictly (see :func:`mmdualvit.checkpoint.load_checkpoint_weights`) unless the config sets
      ``strict_load=False``, and NaN/Inf or non-floating weights are refused unless it sets ``check_weights=False``;
    - files are read with :func:`mmdualvit.checkpoint.read_checkpoint`, with ``weights_only=True`` (on torch < 2.6
      too, whose default is ``False``) unless the config sets ``trust_checkpoint=True`` (``--trust-checkpoint``);
    - at start, temporaries left by a write that was killed half-way are removed from the work dir;
    - ``resume=True`` without a file: uses ``last_checkpoint``; when it is missing, empty, or points to an unreadable
      file, resumes from the newest *readable* ``iter_N.pth`` / ``epoch_N.pth`` in the work dir and says which;
      starts from scratch only when the work dir holds no checkpoint at all.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._strict_load = bool(self.cfg.get(STRICT_KEY, True))
        self._trust = bool(self.cfg.get(TRUST_KEY, False))
        self._check_weights = bool(self.cfg.get(CHECK_WEIGHTS_KEY, True))
        self._prefetched: Optional[Tuple[str, dict]] = None

    def load_or_resume(self) -> None:
        """Clean up interrupted writes, pick a valid checkpoint for ``--resume``, then load as mmengine does."""
        if self._has_loaded:
            return None
        if self.rank == 0:
            for path in remove_stale_temporaries(self.work_dir):
                self.logger.warning(f'Removed {path}: the temporary of a checkpoint write that was interrupted.')
        if self._resume and self._load_from is None:
            resume_from = self._find_resume_checkpoint()
            if resume_from is None:
                self.logger.info(f'--resume: no checkpoint in {self.work_dir} yet, starting from scratch.')
                return None
            self._load_from = resume_from
        return super().load_or_resume()

    def _find_resume_checkpoint(self) -> Optional[str]:
        work_dir = self.work_dir
        record = osp.join(work_dir, 'last_checkpoint')
        candidates = sorted((f for f in os.listdir(work_dir) if _CHECKPOINT_NAME.match(f)),
                            key=lambda f: (int(_CHECKPOINT_NAME.match(f).group(1)), f), reverse=True)
        candidates = [osp.join(work_dir, f) for f in candidates]
        problem = None
        if osp.exists(record):
            with open(record) as f:
                recorded = f.read().strip()
            if not recorded:
                problem = f'{record} is empty'
            else:
                try:
                    self._prefetched = (recorded, self._read(recorded))
                    self.logger.info(f'--resume: resuming from {recorded} (named in {record}).')
                    return recorded
                except CheckpointError as error:
                    problem = str(error)
                    candidates = [c for c in candidates if osp.abspath(c) != osp.abspath(recorded)]
        elif candidates:
            problem = f'{record} does not exist'
        else:
            return None
        errors = []
        for path in candidates:
            try:
                self._prefetched = (path, self._read(path))
            except CheckpointError as error:
                errors.append(str(error))
                self.logger.warning(f'--resume: skipping {path}: {error}')
                continue
            self.logger.warning(f'--resume: {problem}; resuming from the newest readable checkpoint, {path}.')
            return path
        raise CheckpointError(f'--resume: {problem}, and no readable iter_N.pth / epoch_N.pth in {work_dir} '
                              f'({len(errors)} unreadable). Pass the checkpoint to resume from explicitly '
                              '(--resume PATH), or drop --resume to start from scratch in a new work dir.')

    def _read(self, filename: str) -> dict:
        try:
            return read_checkpoint(filename, trust=self._trust)
        except MissingCheckpointError as error:
            raise MissingCheckpointError(f'{error} Check the path given to load_from, --resume or tools/test.py.') \
                from None

    def load_checkpoint(self, filename: str, map_location: Union[str, Callable] = 'cpu',
                        strict: Optional[bool] = None, revise_keys: list = [(r'^module\.', '')]):  # noqa: B006
        """Read ``filename`` safely and load its weights, strictly unless ``strict=False`` or the config's
        ``strict_load=False``. Returns the checkpoint dict, as mmengine's does. Files are always read on the CPU
        (``map_location`` is accepted for mmengine's signature); ``load_state_dict`` copies onto the model's and
        the optimizer's devices."""
        if self._prefetched is not None and self._prefetched[0] == filename:
            checkpoint = self._prefetched[1]
        else:
            checkpoint = self._read(filename)
        self._prefetched = None
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        load_checkpoint_weights(model, checkpoint, filename, self._strict_load if strict is None else strict,
                                revise_keys, check_weights=self._check_weights, logger=self.logger)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint
