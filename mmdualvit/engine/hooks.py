"""Runner hooks shipped with mmdualvit's configs: checkpoints that are atomic, portable, safe to load and finite, and
a training that stops at the first non-finite loss."""
import functools
import math
import os.path as osp
from collections import Counter
from typing import Optional

import numpy as np
import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import HistoryBuffer
from mmengine.optim import OptimWrapperDict

from ..checkpoint import _listed, compare_weights
from ..fileio import ATOMIC_BACKEND, atomic_write
from ..registry import HOOKS

FINITE_LOSS_FIX = ('lower the learning rate, clip gradients (optim_wrapper.clip_grad=dict(max_norm=...)) or check the '
                   'data, then start from the last checkpoint\'s weights in a new work dir (--work-dir NEW_DIR '
                   '--cfg-options load_from=CHECKPOINT): --resume would also restore its optimizer\'s learning rate')

# Mark a history buffer / a Counter stored as plain data, so that loading can tell them from other dicts.
_PLAIN_BUFFER = 'mmdualvit.plain_history_buffer'
_PLAIN_COUNTER = 'mmdualvit.plain_counter'
_PLAIN_PARTS = ('message_hub', 'param_schedulers')  # the parts of a checkpoint that hold such objects


def _to_plain(value):
    """``value`` with every ``HistoryBuffer``, ``collections.Counter`` and numpy scalar in it (nested in dicts and
    lists) replaced by plain Python data; buffers and Counters become marked dicts that :func:`_from_plain` restores.

    mmengine pickles the message hub's buffers as objects holding numpy arrays and references to their statistics
    functions (``builtins.getattr``), which ``weights_only=True`` rightly refuses, and torch < 2.4 refuses the Counter
    in which multi-step schedulers keep their milestones; lists of numbers need no allow-list at all.
    """
    if isinstance(value, HistoryBuffer):
        log, count = value.data
        return {_PLAIN_BUFFER: 1, 'log_history': log.tolist(), 'count_history': count.tolist(),
                'max_length': value.max_length}
    if isinstance(value, Counter):
        return {_PLAIN_COUNTER: [[k, v] for k, v in value.items()]}
    if isinstance(value, np.generic):  # e.g. mmengine's `eta`, a numpy float64
        return value.item()
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return [_to_plain(v) for v in value] if isinstance(value, list) else value


def _from_plain(value):
    if isinstance(value, dict):
        if value.get(_PLAIN_BUFFER):
            return HistoryBuffer(value['log_history'], value['count_history'], value['max_length'])
        if set(value) == {_PLAIN_COUNTER}:
            return Counter({k: v for k, v in value[_PLAIN_COUNTER]})
        return {k: _from_plain(v) for k, v in value.items()}
    return [_from_plain(v) for v in value] if isinstance(value, list) else value


def checkpoint_to_plain(checkpoint: dict) -> None:
    """What PortableCheckpointHook does before a save, in place: the message hub's history buffers, numpy scalars
    and the schedulers' Counters become plain data (:func:`_to_plain`)."""
    for part in _PLAIN_PARTS:
        if part in checkpoint:
            checkpoint[part] = _to_plain(checkpoint[part])


def checkpoint_from_plain(checkpoint: dict) -> None:
    """Inverse of :func:`checkpoint_to_plain`, in place, after a load (dicts written by other code are left alone)."""
    for part in _PLAIN_PARTS:
        if part in checkpoint:
            checkpoint[part] = _from_plain(checkpoint[part])


@HOOKS.register_module()
class PortableCheckpointHook(CheckpointHook):
    """mmengine's :class:`~mmengine.hooks.CheckpointHook` with checkpoints that never lose work and load anywhere.

    Differences (all arguments are mmengine's):

    - local checkpoints go through the ``mmdualvit_atomic_local`` backend unless ``backend_args`` says otherwise,
      and ``last_checkpoint`` is written atomically too (mmengine rewrites it in place);
    - with ``max_keep_ckpts`` the oldest checkpoint, and with ``save_best`` the previous best one, is removed only
      *after* the new one is complete;
    - weights holding NaN/Inf are never saved (:class:`FloatingPointError`): the checkpoints already written, which
      rotation would otherwise delete, stay;
    - the message hub's history is stored as plain lists (and multi-step schedulers' milestone Counters as plain
      pairs), so the files load with ``torch.load(f, weights_only=True)`` without mmdualvit (or mmengine)
      installed, on torch < 2.4 too.
    """

    def __init__(self, *args, backend_args: Optional[dict] = None, out_dir: Optional[str] = None, **kwargs):
        if backend_args is None and kwargs.get('file_client_args') is None and '://' not in str(out_dir or ''):
            backend_args = dict(backend=ATOMIC_BACKEND)
        super().__init__(*args, backend_args=backend_args, out_dir=out_dir, **kwargs)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Refuse to save weights holding NaN/Inf (the save, and so the rotation, does not happen); make the
        checkpoint plain data."""
        state = {k: v for k, v in checkpoint.get('state_dict', {}).items() if isinstance(v, torch.Tensor)}
        not_finite = compare_weights(state, state).not_finite
        if not_finite:
            meta = checkpoint.get('meta', {})
            step = f'epoch {meta.get("epoch")}' if self.by_epoch else f'iteration {meta.get("iter")}'
            raise FloatingPointError(
                f'not saving the checkpoint of {step}: {len(not_finite)} model tensors hold NaN or Inf '
                f'({_listed(not_finite)}); training has diverged. The checkpoints already written are kept; '
                f'{FINITE_LOSS_FIX}.')
        checkpoint_to_plain(checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint_from_plain(checkpoint)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        # mmengine's, with the removal of the previous best checkpoint (done before the save there) after it.
        backend, removals = self.file_backend, []
        self.file_backend = _RemovalsQueued(backend, removals)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        for remove, path in removals:
            remove(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        # Same bookkeeping as mmengine's, reordered: save first, then rotate, then point last_checkpoint at it.
        self.last_ckpt = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        expired = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                expired = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        runner.save_checkpoint(self.out_dir, self.filename_tmpl.format(step), self.file_client_args,
                               save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
                               meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write(str(self.last_ckpt).encode(), osp.join(runner.work_dir, 'last_checkpoint'))
        if expired is not None and expired != step:
            old = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(expired))
            if self.file_backend.isfile(old):
                self.file_backend.remove(old)
            elif self.file_backend.isdir(old):  # deepspeed writes directories
                self.file_backend.rmtree(old)


class _RemovalsQueued:
    """A file backend whose ``remove`` and ``rmtree`` calls are queued as ``(method, path)``, not run."""

    def __init__(self, backend, queue: list):
        self._backend, self._queue = backend, queue

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def remove(self, path) -> None:
        self._queue.append((self._backend.remove, path))

    def rmtree(self, path) -> None:
        self._queue.append((self._backend.rmtree, path))


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Stop training at a NaN or Inf loss before it reaches the weights, or skip at most ``max_skips`` such steps.

    The check runs inside the optimizer wrapper's ``update_params`` (so before ``backward`` and ``step``), on the
    summed loss, for every iteration; in distributed training all ranks decide together. A skipped iteration updates
    nothing: no step, and the buffers its forward pass changed (BatchNorm statistics) are restored; the
    ``max_skips + 1``-th non-finite loss of a run stops it with :class:`FloatingPointError`. A model whose
    ``train_step`` does not call ``update_params`` is checked after the iteration instead, and stopped there (its
    weights are then already updated, but :class:`PortableCheckpointHook` saves no non-finite weights).

    mmdet's ``CheckInvalidLossHook`` checks only every 50 iterations, after the step, with an ``assert``.

    Args:
        max_skips (int): How many iterations with a non-finite loss a run may skip. Defaults to 0: stop at the first.
    """

    priority = 'ABOVE_NORMAL'  # after_train_iter before the checkpoint hook (VERY_LOW)

    def __init__(self, max_skips: int = 0):
        if not isinstance(max_skips, int) or isinstance(max_skips, bool) or max_skips < 0:
            raise ValueError(f'FiniteLossHook: max_skips must be an integer >= 0, got {max_skips!r}.')
        self.max_skips = max_skips
        self.skipped = 0
        self._checked_iter = None
        self._wrapped = []
        self._buffers = {}

    def before_train(self, runner) -> None:
        self.after_train(runner)  # a previous train() of this hook that raised
        self.skipped = 0
        wrapper = runner.optim_wrapper
        wrappers = list(wrapper.values()) if isinstance(wrapper, OptimWrapperDict) else [wrapper]
        for each in wrappers:
            each.update_params = functools.partial(self._update_params, runner, each.update_params)
            self._wrapped.append(each)

    def after_train(self, runner) -> None:
        for wrapper in self._wrapped:
            del wrapper.update_params  # the class's method again
        self._wrapped = []

    def _update_params(self, runner, update_params, loss: torch.Tensor, *args, **kwargs) -> None:
        total = loss.detach().float().sum()
        if get_world_size() > 1:  # NaN/Inf on any rank makes the sum non-finite on all
            total = total.clone()
            all_reduce(total, op='sum')
        self._checked_iter = runner.iter
        if bool(torch.isfinite(total)):
            return update_params(loss, *args, **kwargs)
        own = loss.detach().float().sum().item()
        self._non_finite(runner, f'{own}' if not math.isfinite(own) else f'{total.item()} on another rank',
                         'before this step updated')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs: Optional[dict] = None) -> None:
        if self._checked_iter == runner.iter or not outputs or 'loss' not in outputs:
            return  # checked in update_params (runner.iter is advanced after this hook)
        loss = outputs['loss']
        value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(self._message(runner, f'{value}', 'after this step updated'))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.skipped < self.max_skips:  # this iteration may be skipped: keep what its forward pass changes
            self._buffers = {name: buffer.detach().clone() for name, buffer in runner.model.named_buffers()}

    def _non_finite(self, runner, value: str, when: str) -> None:
        if self.skipped < self.max_skips:
            self.skipped += 1
            with torch.no_grad():  # BatchNorm's running statistics and counters, as before the forward pass
                for name, buffer in runner.model.named_buffers():
                    buffer.copy_(self._buffers[name])
            runner.logger.warning(f'loss is {value} at iteration {runner.iter + 1}: skipped this update, and restored '
                                  f'the {len(self._buffers)} buffers (BatchNorm statistics) its forward pass changed; '
                                  f'the data it drew is not drawn again ({self.skipped} of at most {self.max_skips}, '
                                  f'default_hooks.finite_loss.max_skips).')
            return
        raise FloatingPointError(self._message(runner, value, when))

    def _message(self, runner, value: str, when: str) -> str:
        skipped = f' after skipping {self.skipped} such iterations (max_skips={self.max_skips})' if self.max_skips \
            else ''
        return (f'loss is {value} at iteration {runner.iter + 1} (epoch {runner.epoch + 1}){skipped}: training stopped '
                f'{when} the weights, and no checkpoint is written from it. Training has diverged: {FINITE_LOSS_FIX}. '
                f'To skip up to N such iterations instead, set default_hooks.finite_loss.max_skips=N.')
