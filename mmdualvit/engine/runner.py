"""A Runner that loads checkpoints strictly and safely, and whose trainings never throw trained work away.

mmengine's :class:`~mmengine.runner.Runner` loads ``load_from`` / ``resume`` files with ``strict=False`` (a wrong or
partial file trains or evaluates random weights after a warning), reads them with torch's default ``weights_only``
(``False`` before torch 2.6), and on ``resume=True`` without ``last_checkpoint`` silently starts from iteration 0,
after which ``max_keep_ckpts`` deletes the trained checkpoints. A training started into a work dir that holds
checkpoints, or resumed from an older one, overwrites them, and two trainings in one work dir overwrite each other.
:class:`StrictRunner` changes exactly these points. Configs select it with ``runner_type = 'mmdualvit.StrictRunner'``
(ours do), which mmdet's, mmseg's and our tools all honour.
"""
import os
import os.path as osp
import re
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from mmengine.dist import broadcast_object_list, get_rank, get_world_size
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.runner import EpochBasedTrainLoop, Runner

from ..checkpoint import (CheckpointError, DamagedCheckpointError, MissingCheckpointError, _listed,
                          load_checkpoint_weights, read_checkpoint)
from ..datasets.class_counts import check_class_counts
from ..fileio import lock_work_dir, remove_temporaries, unlock_work_dir
from ..registry import RUNNERS

STRICT_KEY = 'strict_load'  # top-level config key; `--cfg-options strict_load=False` allows a partial load
TRUST_KEY = 'trust_checkpoint'  # set by --trust-checkpoint: unpickle fully (weights_only=False)
CHECK_WEIGHTS_KEY = 'check_weights'  # `--skip-weight-check` sets it False: accept NaN/Inf or non-float weights
OVERWRITE_KEY = 'overwrite_work_dir'  # set by --overwrite-work-dir: train into a work dir holding checkpoints
_CHECKPOINT_NAME = re.compile(r'^(?P<kind>epoch|iter)_(?P<step>\d+)\.pth$')


class WorkDirError(RuntimeError):
    """A training that would overwrite or mix with the checkpoints of its work dir."""


@RUNNERS.register_module()
class StrictRunner(Runner):
    """:class:`~mmengine.runner.Runner` whose loading is strict and safe and whose trainings never lose work.

    Loading (``load_from``, ``resume``, test-time):

    - weights load strictly (see :func:`mmdualvit.checkpoint.load_checkpoint_weights`) unless the config sets
      ``strict_load=False``, and NaN/Inf or non-floating weights are refused unless it sets ``check_weights=False``;
    - files are read with :func:`mmdualvit.checkpoint.read_checkpoint`, with ``weights_only=True`` (on torch < 2.6
      too, whose default is ``False``) unless the config sets ``trust_checkpoint=True`` (``--trust-checkpoint``);
    - ``resume=True`` without a file: uses ``last_checkpoint``; when it is missing, empty, damaged, or points to a
      damaged file, resumes from the newest *readable* checkpoint of the work dir and says which; when a newer
      readable checkpoint was written after ``last_checkpoint`` (a run killed between the two writes), from that one;
      starts from scratch only when the work dir holds no checkpoint at all (docs/checkpoints.md has the details);
    - a resumed iteration (epoch) beyond ``max_iters`` (``max_epochs``) is an error, and optimizer settings of the
      config that the checkpoint replaces (e.g. the learning rate) are named in a warning.

    Training (:meth:`train`) in a work dir:

    - holds the work dir's lock (:func:`mmdualvit.fileio.lock_work_dir`, an ``flock`` the kernel releases however
      the process ends), so a second training in the same work dir is refused, naming the holder;
    - refuses to start when the work dir holds ``iter_N.pth`` / ``epoch_N.pth`` files and the run does not resume,
      resumes from a checkpoint older than some of them, or is given one from another folder (``--resume PATH``),
      unless the config sets ``overwrite_work_dir=True`` (``--overwrite-work-dir``);
    - removes the temporaries that writes killed half-way left there (every writer there holds the lock).

    Testing and validation take no lock and delete nothing. The config is dumped into the work dir only by a training
    that holds the lock and passed these checks; a test or validation run dumps it into its own log folder.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._strict_load = bool(self.cfg.get(STRICT_KEY, True))
        self._trust = bool(self.cfg.get(TRUST_KEY, False))
        self._check_weights = bool(self.cfg.get(CHECK_WEIGHTS_KEY, True))
        self._overwrite = bool(self.cfg.get(OVERWRITE_KEY, False))
        self._unreadable: List[str] = []  # real paths of the checkpoints --resume found unreadable
        self._resuming: Optional[Tuple[str, bool]] = None  # the file resume() is loading, and with its optimizer?

    def register_default_hooks(self, hooks: Optional[dict] = None) -> None:
        """mmengine's, where ``None`` also switches off a default hook that mmengine does not define itself (e.g.
        ``--cfg-options default_hooks.finite_loss=None``; mmengine asserts on it)."""
        if hooks is not None:
            defined_here = ('runtime_info', 'timer', 'sampler_seed', 'logger', 'param_scheduler', 'checkpoint')
            hooks = {name: hook for name, hook in hooks.items() if hook is not None or name in defined_here}
        super().register_default_hooks(hooks)

    # ------------------------------------------------------------------------------------------- training
    def train(self):
        """mmengine's ``train``, holding the work dir's lock, after the work-dir checks (see the class)."""
        with training_lock(self.work_dir, self._prepare_work_dir):
            return super().train()

    def _prepare_work_dir(self) -> None:
        for path in remove_temporaries(self.work_dir):
            self.logger.warning(f'Removed {path}: the temporary of a write that was interrupted.')
        self._check_work_dir()
        self._dump_config_into(self.work_dir)

    def dump_config(self) -> None:
        """Deferred: mmengine dumps the config into the work dir while the runner is built, before anything is
        checked, so a refused training, or an evaluation given a training's work dir, replaced the config that sits
        beside the checkpoints. :meth:`train` dumps it into the work dir once it holds the lock and the checks passed;
        :meth:`val` and :meth:`test` into their own timestamped log folder."""

    def _dump_config_into(self, directory: str) -> None:
        name = osp.basename(self.cfg.filename) if self.cfg.filename is not None else f'{self.timestamp}.py'
        self.cfg.dump(osp.join(directory, name))

    def val(self) -> dict:
        if self.rank == 0:
            self._dump_config_into(self.log_dir)
        return super().val()

    def test(self) -> dict:
        if self.rank == 0:
            self._dump_config_into(self.log_dir)
        return super().test()

    def _checkpoint_places(self) -> List[Tuple[str, re.Pattern, Optional[str]]]:
        """``(directory, name pattern, kind)`` of where this work dir's training checkpoints are: ``epoch_N.pth`` /
        ``iter_N.pth`` in it (kind from the name), and where the checkpoint hook writes them as its ``out_dir`` and
        ``filename_tmpl`` say (mmengine saves into ``out_dir/<work dir's name>``). A remote ``out_dir`` is left out."""
        places = [(self.work_dir, _CHECKPOINT_NAME, None)]
        for hook in self.hooks:
            if not isinstance(hook, CheckpointHook):
                continue
            out_dir = self.work_dir if hook.out_dir is None else hook.out_dir
            if '://' in str(out_dir):
                continue
            if out_dir != self.work_dir:  # compared as mmengine's hook compares them: as given, not resolved
                out_dir = osp.join(out_dir, osp.basename(self.work_dir.rstrip(osp.sep)))
            parts = re.split(r'\{[^}]*\}', hook.filename_tmpl, maxsplit=1)
            if len(parts) != 2:  # a template without a step: every save replaces one file
                continue
            prefix, suffix = (re.escape(part) for part in parts)
            kind = 'epoch' if hook.by_epoch else 'iter'
            places.append((out_dir, re.compile(f'^{prefix}(?P<step>\\d+){suffix}$'), kind))
        return places

    def _work_dir_checkpoints(self) -> List[Tuple[str, int, str]]:
        """``(kind, step, path)`` of the training checkpoints in :meth:`_checkpoint_places`, newest first."""
        found = {}
        for directory, pattern, kind in self._checkpoint_places():
            for name in os.listdir(directory) if osp.isdir(directory) else ():
                match = pattern.match(name)
                if match:
                    path = osp.join(directory, name)
                    found[osp.realpath(path)] = (kind or match['kind'], int(match['step']), path)
        return sorted(found.values(), key=lambda item: (item[1], item[0]), reverse=True)

    def _check_work_dir(self) -> None:
        """Refuse a training that would overwrite checkpoints of the work dir (unless ``overwrite_work_dir``)."""
        found = self._work_dir_checkpoints()
        if not found or self._overwrite:
            return
        newest = found[0][2]
        names = _names(p for _, _, p in found)
        if not self._resume:
            raise WorkDirError(
                f'{self.work_dir} already holds checkpoints ({names}); this new run would overwrite them. Resume the '
                f'newest with --resume (or --resume {newest}), train in another work dir (--work-dir), or pass '
                f'--overwrite-work-dir (--cfg-options {OVERWRITE_KEY}=True) to replace them.')
        explicit = self._load_from is not None  # --resume PATH, not a file the scan chose
        if not explicit:
            self._load_from = self._find_resume_checkpoint()
            if self._load_from is None:
                return  # nothing to resume from: resume() starts from scratch
        # Read again where the scan already read it: the file is checked as it is now, and nothing is kept.
        meta = check_training_position(self._read(self._load_from), self._load_from)
        skip = {osp.realpath(self._load_from), *self._unreadable}  # paths compared as files, however spelled
        newer = [path for kind, step, path in found if step > meta[kind] and osp.realpath(path) not in skip]
        if newer:
            raise WorkDirError(
                f'--resume {self._load_from}: {self.work_dir} holds newer checkpoints ({_names(newer)}), which this '
                f'run would overwrite, and checkpoint rotation could then delete the one resumed from. Resume the '
                f'newest with --resume {newer[0]}, branch off into another work dir (--work-dir NEW_DIR --resume '
                f'{self._load_from}), or pass --overwrite-work-dir (--cfg-options {OVERWRITE_KEY}=True) to continue '
                f'here anyway.')
        places = {osp.realpath(directory) for directory, _, _ in self._checkpoint_places()}
        if explicit and osp.realpath(osp.dirname(self._load_from)) not in places:
            raise WorkDirError(  # its keep_ckpt_ids would make mmengine's rotation delete files here by name
                f'--resume {self._load_from}: the file lies outside {self.work_dir}, which holds checkpoints of '
                f'another run ({names}): continuing here would mix two runs, and checkpoint rotation (max_keep_ckpts) '
                f'could delete those files. Resume into a new work dir (--work-dir NEW_DIR --resume '
                f'{self._load_from}), or pass --overwrite-work-dir (--cfg-options {OVERWRITE_KEY}=True) if they may '
                f'go.')

    # ------------------------------------------------------------------------------------------- datasets
    def build_train_loop(self, loop):
        return self._class_checked(super().build_train_loop(loop), 'train_dataloader')

    def build_val_loop(self, loop):
        return self._class_checked(super().build_val_loop(loop), 'val_dataloader')

    def build_test_loop(self, loop):
        return self._class_checked(super().build_test_loop(loop), 'test_dataloader')

    def _class_checked(self, loop, where: str):
        check_class_counts(self.model, loop.dataloader.dataset, where)
        return loop

    # ------------------------------------------------------------------------------------------- loading
    def load_or_resume(self) -> None:
        """Pick a valid checkpoint for ``--resume``, then load as mmengine does."""
        if self._has_loaded:
            return None
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
        candidates = [path for _, _, path in self._work_dir_checkpoints()]
        recorded, problem = _recorded_checkpoint(record)
        if recorded:
            stale_from = self._written_after(record, recorded, candidates)
            if stale_from:
                return stale_from
            try:
                self._read(recorded)
                self.logger.info(f'--resume: resuming from {recorded} (named in {record}).')
                return recorded
            except CheckpointError as error:
                self._refuse_if_intact(recorded, error)
                problem = str(error).rstrip('.')
                unreadable = osp.realpath(recorded)
                self._unreadable.append(unreadable)
                candidates = [c for c in candidates if osp.realpath(c) != unreadable]
        elif problem is None:
            if not candidates:
                return None
            problem = f'{record} does not exist'
        path = self._first_readable(candidates)
        if path is not None:
            self.logger.warning(f'--resume: {problem}; resuming from the newest readable checkpoint, {path}.')
            return path
        raise CheckpointError(f'--resume: {problem}, and no readable iter_N.pth / epoch_N.pth in {work_dir} '
                              f'({len(self._unreadable)} unreadable). Pass the checkpoint to resume from explicitly '
                              '(--resume PATH), or drop --resume to start from scratch in a new work dir.')

    def _written_after(self, record: str, recorded: str, candidates: List[str]) -> Optional[str]:
        """The newest readable checkpoint of ``candidates`` that is newer than ``recorded`` (the file ``record``
        names) *and was written after* ``record``: the checkpoint hook writes a checkpoint before it updates
        ``last_checkpoint``, so a run killed in between leaves the pointer one save behind. A pointer written after
        the newer files (edited by hand, say) is left to :meth:`_check_work_dir`, which refuses to overwrite them."""
        real = [osp.realpath(c) for c in candidates]  # the pointer may name them through a link to the work dir
        if osp.realpath(recorded) not in real:
            return None
        pointer_time = os.stat(record).st_mtime_ns
        newer = candidates[:real.index(osp.realpath(recorded))]
        path = self._first_readable([p for p in newer if os.stat(p).st_mtime_ns > pointer_time])
        if path is not None:
            self.logger.warning(f'--resume: {record} names {recorded}, but {path} is newer and was written after it '
                                f'(the last run stopped between saving {osp.basename(path)} and updating {record}); '
                                f'resuming from {path}.')
        return path

    def _first_readable(self, paths: List[str]) -> Optional[str]:
        """The first of ``paths`` that reads; damaged ones before it (truncated, empty, corrupt:
        what a killed save leaves) are recorded as unreadable, with a warning each, and any other failure stops the
        scan (:meth:`_refuse_if_intact`)."""
        for path in paths:
            try:
                self._read(path)
                return path
            except CheckpointError as error:
                self._refuse_if_intact(path, error)
                self._unreadable.append(osp.realpath(path))
                self.logger.warning(f'--resume: skipping {path}: {error}')
        return None

    def _refuse_if_intact(self, path: str, error: CheckpointError) -> None:
        """Stop --resume at a checkpoint it found that exists and cannot be read but is not damaged (it needs
        --trust-checkpoint, its permissions, a file-system error): resuming from an older one would overwrite it.
        ``overwrite_work_dir`` allows that."""
        if isinstance(error, (DamagedCheckpointError, MissingCheckpointError)) or self._overwrite:
            return
        raise WorkDirError(
            f'--resume: {path} cannot be read, and it is not damaged, so it is not skipped (resuming from an older '
            f'checkpoint would overwrite it): {error} Choose: fix what the message names (e.g. pass '
            f'--trust-checkpoint if you trust the file), resume from another checkpoint in a new work dir '
            f'(--work-dir NEW_DIR --resume OLDER.pth), or pass --overwrite-work-dir to replace it.') from None

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default') -> None:
        """mmengine's ``resume``; then a resumed position beyond the configured end is an error, and optimizer
        settings of the config that the checkpoint replaced are named in a warning."""
        configured = _optimizer_settings(self.optim_wrapper) if resume_optimizer else {}
        self._resuming = filename, resume_optimizer
        wrapper = self.optim_wrapper

        def load_optimizer_state(state_dict):  # the optimizer's own KeyError ('step', ...) names neither file nor fix
            try:
                type(wrapper).load_state_dict(wrapper, state_dict)
            except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as err:
                raise CheckpointError(
                    f'--resume {filename}: its optimizer state does not fit the optimizer of this config '
                    f'({type(getattr(wrapper, "optimizer", wrapper)).__name__}: {type(err).__name__}: {err}); it was '
                    f'saved by another optimizer type or with other parameter groups (paramwise_cfg). Resume with the '
                    f'optimizer it was trained with, or start a new training from its weights in a new work dir '
                    f'(--work-dir NEW_DIR --cfg-options load_from={filename}).') from None
        patched = resume_optimizer and not isinstance(wrapper, dict)  # (a dict: not built yet, mmengine builds it)
        if patched:
            wrapper.load_state_dict = load_optimizer_state
        try:
            super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        finally:
            self._resuming = None
            if patched:
                del wrapper.load_state_dict  # the class's method again
        loop = self.train_loop
        if isinstance(loop, EpochBasedTrainLoop):
            position, end, unit, skip = self.epoch, loop.max_epochs, ('epoch', 'train_cfg.max_epochs'), ''
        else:
            position, end, unit = self.iter, loop.max_iters, ('iteration', 'train_cfg.max_iters')
            skip = f', and mmengine would first advance the data loader {position} steps'
        if position > end:
            raise CheckpointError(
                f'--resume: {filename} was saved at {unit[0]} {position}, beyond the end of this training '
                f'({unit[1]}={end}): there is nothing left to train{skip}. Raise {unit[1]} above {position} to '
                f'train further, or resume from an earlier checkpoint.')
        replaced = []
        for group, before in configured.items():
            after = _optimizer_settings(self.optim_wrapper).get(group, {})
            for key, value in before.items():
                if key.startswith('initial_'):
                    continue
                base = f'initial_{key}'  # set by param schedulers; the current value follows the schedule
                ours, theirs = (before[base], after.get(base)) if base in before else (value, after.get(key))
                if theirs is not None and _plain(ours) != _plain(theirs):
                    replaced.append(f'{key}={theirs!r} (config: {ours!r}{group})')
        if replaced:
            self.logger.warning(
                f'--resume: {filename} replaces optimizer settings of the config: {", ".join(replaced)}. mmengine '
                f'restores the optimizer state on resume, so training continues with the checkpoint\'s values. To '
                f'train with the config\'s, start a new run from its weights instead (in a new work dir, '
                f'--cfg-options load_from={filename}).')

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
        checkpoint = self._read(filename)
        if self._resuming is not None and self._resuming[0] == filename:
            check_training_position(checkpoint, filename)
            if not isinstance(checkpoint.get('message_hub'), dict):
                raise CheckpointError(
                    f'--resume {filename}: the file holds no message_hub state, so the training cannot continue where '
                    f'it stopped: it was not written by an mmengine training (e.g. an mmcv 1.x / mmdet 2.x '
                    f'checkpoint). Start a new training from its weights in a new work dir (--work-dir NEW_DIR '
                    f'--cfg-options load_from={filename}).')
            if self._resuming[1] and 'optimizer' not in checkpoint:
                self.logger.warning(f'--resume {filename}: the file holds no optimizer state (saved with '
                                    f'save_optimizer=False): the optimizer starts afresh (momenta, Adam moments) with '
                                    f'the config\'s settings.')
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        load_checkpoint_weights(model, checkpoint, filename, self._strict_load if strict is None else strict,
                                revise_keys, check_weights=self._check_weights, logger=self.logger)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint


@contextmanager
def training_lock(work_dir: str, prepare: Optional[Callable[[], None]] = None) -> Iterator[None]:
    """Rank 0 holds ``work_dir``'s lock (:func:`mmdualvit.fileio.lock_work_dir`) while the body runs, after
    ``prepare()``; when rank 0 cannot take it, or ``prepare`` raises, every rank raises before the body.

    ``tools/train.py`` takes it before it builds the runner, because mmengine's ``Runner.__init__`` writes its log
    folder into the work dir; :meth:`StrictRunner.train` takes it (again) for trainings started by other tools."""
    error = lock = None
    if get_rank() == 0:
        try:
            lock = lock_work_dir(work_dir)
            try:
                if prepare is not None:
                    prepare()
            except BaseException:
                unlock_work_dir(lock)
                raise
        except Exception as err:  # noqa: B902 (raised below, on every rank)
            error = err
    if get_world_size() > 1:  # every rank stops when rank 0 refuses
        shared = [None if error is None else str(error)]
        broadcast_object_list(shared, src=0)
        if shared[0] is not None and error is None:
            raise WorkDirError(f'rank 0 refused to start: {shared[0]}')
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            unlock_work_dir(lock)


def check_training_position(checkpoint: dict, filename: str) -> dict:
    """The ``meta`` of a checkpoint to resume from, after checking that it records a training position: a dict whose
    ``epoch`` and ``iter`` are non-negative integers (mmengine would otherwise continue from whatever they hold)."""
    meta = checkpoint.get('meta')
    if not isinstance(meta, dict):
        raise CheckpointError(f'--resume {filename}: the file records no training state (its meta is '
                              f'{type(meta).__name__}, not a dict with epoch and iter): it holds weights only. Start '
                              f'a new training from its weights with load_from (--cfg-options load_from={filename}).')
    for key in ('epoch', 'iter'):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f'--resume {filename}: its meta[{key!r}] is {value!r}, not a non-negative integer: '
                                  f'the file was not written by a training run, or was altered. Resume from another '
                                  f'checkpoint, or start a new training from its weights with load_from.')
    return meta


def _recorded_checkpoint(record: str) -> Tuple[str, Optional[str]]:
    """The path that ``last_checkpoint`` file ``record`` names, or '' and what is wrong with it (None if it does not
    exist). mmengine's own hook rewrites it in place, so a crash can leave it empty or zero-filled."""
    if not osp.exists(record):
        return '', None
    try:
        with open(record, 'rb') as f:
            recorded = f.read().decode().strip()
    except UnicodeDecodeError as err:
        return '', f'{record} is damaged ({err})'
    if '\0' in recorded:
        return '', f'{record} is damaged (it holds NUL bytes)'
    return recorded, None if recorded else f'{record} is empty'


def _names(paths) -> str:
    return _listed([osp.basename(p) for p in paths])


def _optimizer_settings(optim_wrapper) -> Dict[str, dict]:
    """The scalar settings (lr, weight_decay, betas ...) of each optimizer param group, by a readable group name."""
    if isinstance(optim_wrapper, OptimWrapperDict):
        wrappers = list(optim_wrapper.items())
    else:
        wrappers = [('', optim_wrapper)]
    settings = {}
    for name, wrapper in wrappers:
        optimizer = getattr(wrapper, 'optimizer', None)
        for index, group in enumerate(getattr(optimizer, 'param_groups', [])):
            label = ', '.join(filter(None, [f'optimizer {name!r}' if name else '',
                                            f'param group {index}' if len(optimizer.param_groups) > 1 else '']))
            settings[f'; {label}' if label else ''] = {
                k: v for k, v in group.items() if k != 'params' and isinstance(v, (bool, int, float, tuple, list))}
    return settings


def _plain(value):
    return tuple(value) if isinstance(value, list) else value
