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
import pickle
import re
from collections import OrderedDict
from typing import Callable, List, Optional, Tuple, Union

import torch
from mmengine.fileio import get_file_backend, get_local_path
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader

from ..registry import RUNNERS
from .fileio import remove_stale_temporaries

STRICT_KEY = 'strict_load'  # top-level config key; `--cfg-options strict_load=False` allows a partial load
_CHECKPOINT_NAME = re.compile(r'^(?:epoch|iter)_(\d+)\.pth$')
_SHOWN = 5  # mismatches listed per kind in an error message


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe to unpickle, or not matching the model."""


def checkpoints_trusted() -> bool:
    """Whether the user vouched for their checkpoints (``--trust-checkpoint``, i.e. the environment variable
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` that torch itself honours)."""
    return os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '0').lower() in ('1', 'y', 'yes', 'true')


def read_checkpoint(filename: str, map_location: Union[str, Callable] = 'cpu') -> dict:
    """Read a checkpoint with ``weights_only=True`` (unless trusted) on every torch version, with clear errors.

    Remote files (http(s), s3 ... : any scheme an mmengine file backend serves) are fetched to a local temporary
    and read the same way; mmengine's model-zoo schemes (``open-mmlab://``, ``torchvision://`` ...) go through its
    ``CheckpointLoader``, which uses torch's default ``weights_only``.
    """
    if '://' in filename:
        try:
            get_file_backend(filename)
        except (KeyError, ValueError):  # not a file backend's prefix: a model-zoo name
            return CheckpointLoader.load_checkpoint(filename, map_location=map_location)
        with get_local_path(filename) as local:
            return read_checkpoint(local, map_location)
    if not osp.isfile(filename):
        raise CheckpointError(f'checkpoint file {filename!r} does not exist')
    trusted = checkpoints_trusted()
    try:
        checkpoint = torch.load(filename, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as error:
        # torch >= 2.4 says "Unsupported global: GLOBAL x.y", older torch "Unsupported class x.y".
        refused = re.compile(r'unsupported (global|class)', re.IGNORECASE)
        if not trusted and refused.search(str(error)):
            detail = next(line for line in str(error).splitlines() if refused.search(line))
            raise CheckpointError(
                f'checkpoint file {filename!r} is refused by safe loading (Weights only load failed, '
                f'weights_only=True): {detail.strip()} Unpickling it could run arbitrary code. Only if you trust '
                'where the file comes from, pass --trust-checkpoint.') from None
        # Random or damaged bytes: torch wraps the unpickler's complaint (e.g. "Unsupported operand 233") in advice
        # about weights_only that does not apply here; keep only the complaint.
        skip = ('Weights only load failed', 'Please file an issue', 'Check the documentation')
        lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith(skip)]
        raise CheckpointError(f'checkpoint file {filename!r} is corrupt or not a torch checkpoint: '
                              f'{lines[0] if lines else type(error).__name__}') from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(f'checkpoint file {filename!r} is corrupt or truncated (an interrupted write or '
                              f'copy?): {str(error).splitlines()[0]}') from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'checkpoint file {filename!r} holds a {type(checkpoint).__name__}, not a dict')
    return checkpoint


def _model_state_dict(checkpoint: dict, revise_keys: List[Tuple[str, str]]) -> 'OrderedDict[str, torch.Tensor]':
    state_dict = checkpoint.get('state_dict', checkpoint)
    metadata = getattr(state_dict, '_metadata', OrderedDict())
    for pattern, replacement in revise_keys:
        state_dict = OrderedDict((re.sub(pattern, replacement, k), v) for k, v in state_dict.items())
    state_dict._metadata = metadata
    return state_dict


def load_model_weights(model: torch.nn.Module, checkpoint: dict, filename: str, strict: bool,
                       revise_keys: List[Tuple[str, str]] = ((r'^module\.', ''),), logger=None) -> None:
    """Load a checkpoint's weights into ``model``; any missing, unexpected or mis-shaped tensor is a
    :class:`CheckpointError` when ``strict`` (a warning otherwise).

    The model's own ``_load_from_state_dict`` conversions run first, so only real mismatches count. BatchNorm's
    ``num_batches_tracked`` counters are not required (older mmengine/mmcv files lack them).
    """
    state_dict = _model_state_dict(checkpoint, list(revise_keys))
    missing, unexpected, shapes = [], [], []
    try:
        result = model.load_state_dict(state_dict, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as error:  # torch reports shape mismatches only by raising, after loading the rest
        shapes = re.findall(r'size mismatch for (.+?): copying a param with shape (torch\.Size\(\[.*?\]\)) from '
                            r'checkpoint, the shape in current model is (torch\.Size\(\[.*?\]\))', str(error))
        if not shapes:
            raise
        result = model.load_state_dict({k: v for k, v in state_dict.items() if k not in {s[0] for s in shapes}},
                                       strict=False)
        missing = [k for k in result.missing_keys if k not in {s[0] for s in shapes}]
        unexpected = list(result.unexpected_keys)
    missing = [k for k in missing if not k.endswith('num_batches_tracked')]
    if not (missing or unexpected or shapes):
        return
    lines = []
    for title, items in (('missing in the file', missing), ('unexpected in the file', unexpected),
                         ('shape differs (file vs model)', [f'{k}: {a} vs {b}' for k, a, b in shapes])):
        if items:
            more = f' ... and {len(items) - _SHOWN} more' if len(items) > _SHOWN else ''
            lines.append(f'  {len(items)} {title}: {", ".join(items[:_SHOWN])}{more}')
    report = f'checkpoint {filename!r} does not match the model:\n' + '\n'.join(lines)
    if strict:
        raise CheckpointError(report + f'\nIf a partial load is what you want (e.g. fine-tuning from another '
                              f'head), pass --allow-partial-load or --cfg-options {STRICT_KEY}=False.')
    if logger is not None:
        logger.warning(report + f'\n({STRICT_KEY}=False: loading the rest.)')


@RUNNERS.register_module()
class StrictRunner(Runner):
    """:class:`~mmengine.runner.Runner` whose ``load_from``, ``resume`` and test-time loading are strict and safe.

    - weights load strictly (see :func:`load_model_weights`) unless the config sets ``strict_load=False``;
    - files are read with ``weights_only=True`` even on torch < 2.6, whose default is ``False``;
    - at start, temporaries left by a write that was killed half-way are removed from the work dir;
    - ``resume=True`` without a file: uses ``last_checkpoint``; when it is missing, empty, or points to an unreadable
      file, resumes from the newest *readable* ``iter_N.pth`` / ``epoch_N.pth`` in the work dir and says which;
      starts from scratch only when the work dir holds no checkpoint at all.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._strict_load = bool(self.cfg.get(STRICT_KEY, True))
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
                    self._prefetched = (recorded, read_checkpoint(recorded))
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
                self._prefetched = (path, read_checkpoint(path))
            except CheckpointError as error:
                errors.append(str(error))
                self.logger.warning(f'--resume: skipping {path}: {error}')
                continue
            self.logger.warning(f'--resume: {problem}; resuming from the newest readable checkpoint, {path}.')
            return path
        raise CheckpointError(f'--resume: {problem}, and no readable iter_N.pth / epoch_N.pth in {work_dir} '
                              f'({len(errors)} unreadable). Pass the checkpoint to resume from explicitly '
                              '(--resume PATH), or drop --resume to start from scratch in a new work dir.')

    def load_checkpoint(self, filename: str, map_location: Union[str, Callable] = 'cpu',
                        strict: Optional[bool] = None, revise_keys: list = [(r'^module\.', '')]):  # noqa: B006
        """Read ``filename`` safely and load its weights, strictly unless ``strict=False`` or the config's
        ``strict_load=False``. Returns the checkpoint dict, as mmengine's does."""
        if self._prefetched is not None and self._prefetched[0] == filename:
            # Read on the CPU while choosing; load_state_dict copies onto the model's (and optimizer's) device.
            checkpoint = self._prefetched[1]
        else:
            checkpoint = read_checkpoint(filename, map_location=map_location)
        self._prefetched = None
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        load_model_weights(model, checkpoint, filename, self._strict_load if strict is None else strict,
                           revise_keys, logger=self.logger)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint
