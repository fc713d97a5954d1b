"""Command-line and config handling shared by the tools (train.py and test.py; infer.py and export_onnx.py for
the checkpoint choice)."""
import argparse
import os
import os.path as osp
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.dist import init_dist


@contextmanager
def distributed_session(cfg: Config) -> Iterator[None]:
    """Run a tool's Runner inside a process group that is set up for CPU when needed and always torn down.

    Set-up: see :func:`setup_distributed`. Tear-down: mmengine never destroys the process group it (or we)
    created, and a gloo group left to the interpreter's exit can abort the process after a successful run
    ("terminate called without an active exception", exit -6; pytorch/pytorch#190489): gloo's worker threads
    still hold work whose tensors need the GIL while the interpreter is being finalised. Destroying the group
    while Python is fully alive is what torch asks for, on NCCL too.
    """
    setup_distributed(cfg)
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(cfg: Config) -> None:
    """Initialise the process group of a distributed run before the Runner is built (mmengine's then skips its own),
    so that ``tools/train.py`` can take the work dir's lock on rank 0 first; on GPUs as mmengine's Runner would.

    Without CUDA, mmengine's pytorch launcher would call ``torch.cuda.set_device`` and wrap the model in DDP with
    ``device_ids=[rank]``; both fail. There the group is gloo's and the wrapper has ``device_ids=None``.
    """
    if cfg.get('launcher', 'none') == 'none':
        return
    if torch.cuda.is_available():
        if not dist.is_initialized():
            init_dist(cfg.launcher, **cfg.get('env_cfg', {}).get('dist_cfg', {}))
        return
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                                 find_unused_parameters=cfg.get('find_unused_parameters', False))


def enable_amp(cfg: Config) -> None:
    """``--amp``: fp16 with dynamic loss scaling (bfloat16 autocast on CPU, see :func:`adapt_amp_to_cpu`)."""
    wrapper = cfg.optim_wrapper
    if wrapper.get('type') != 'AmpOptimWrapper':
        wrapper.type = 'AmpOptimWrapper'
        wrapper.setdefault('loss_scale', 'dynamic')


def adapt_amp_to_cpu(cfg: Config) -> None:
    """On machines without CUDA, run a config's fp16 ``AmpOptimWrapper`` as bfloat16 autocast (and say so).

    mmengine's ``AmpOptimWrapper`` refuses to start without a GPU; the official recipes use fp16, so our real
    configs do too.
    """
    wrapper = cfg.get('optim_wrapper')
    if wrapper is None or torch.cuda.is_available() or wrapper.get('type') != 'AmpOptimWrapper':
        return
    from mmengine.logging import print_log
    print_log('No CUDA device: running the config\'s AmpOptimWrapper (fp16) as bfloat16 autocast on CPU.',
              logger='current')
    wrapper.type = 'mmdualvit.CPUAutocastOptimWrapper'
    wrapper.pop('loss_scale', None)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags both tools take: --trust-checkpoint, --allow-partial-load, --skip-weight-check, --compile,
    --cfg-options, --launcher, --local-rank."""
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle checkpoints fully (weights_only=False), for this run only: only for files you '
                             'trust (same as --cfg-options trust_checkpoint=True)')
    parser.add_argument('--allow-partial-load', action='store_true',
                        help='load checkpoints whose tensors do not all match the model (warns instead of failing); '
                             'same as --cfg-options strict_load=False')
    parser.add_argument('--skip-weight-check', action='store_true',
                        help='load weights even if they hold NaN/Inf or are not floating point; '
                             'same as --cfg-options check_weights=False')
    parser.add_argument('--compile', nargs='?', const='inductor', metavar='BACKEND',
                        help='torch.compile the backbone (with BACKEND, default inductor); the first iterations, and '
                             'the first at each new input size, are slow while it compiles')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def require_checkpoint_or_random(parser: argparse.ArgumentParser, args: argparse.Namespace, consequence: str,
                                 action: str) -> None:
    """Stop (exit 2) unless exactly one of ``args.checkpoint`` and ``--random-weights`` is given, so that untrained
    weights are only ever used on request. ``consequence`` says what they would give, ``action`` what
    ``--random-weights`` then does."""
    if args.checkpoint and args.random_weights:
        parser.error('give a CHECKPOINT or --random-weights, not both')
    if not args.checkpoint and not args.random_weights:
        parser.error(f'no CHECKPOINT given. {consequence}: pass the checkpoint tools/train.py wrote for this config, '
                     f'or --random-weights to {action} anyway')


def load_config(args: argparse.Namespace, subdir: str = '') -> Config:
    """The config with the command line applied: launcher, --cfg-options, work dir (``--work-dir``, else the config's
    ``work_dir``, else ``work_dirs/<config name>``; with ``subdir``, that folder of the latter two)."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    default = cfg.get('work_dir') or osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.work_dir = args.work_dir or (osp.join(default, subdir) if subdir else default)
    if args.allow_partial_load:
        cfg.strict_load = False
    if args.skip_weight_check:
        cfg.check_weights = False
    if args.trust_checkpoint:
        cfg.trust_checkpoint = True
    return cfg


def build_runner(cfg: Config, compile_backend: Optional[str] = None):
    """The config's ``runner_type`` if it names one, else :class:`mmdualvit.engine.StrictRunner` (strict, safe
    checkpoint loading and a ``--resume`` that never discards trained checkpoints). With ``compile_backend`` the
    model's backbone is ``torch.compile``'d by that backend (:func:`mmdualvit.models.utils.compile_backbone`)."""
    from mmengine.registry import RUNNERS

    from ..models.utils import compile_backbone
    from .runner import StrictRunner
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else StrictRunner.from_cfg(cfg)
    if compile_backend:
        backbone = compile_backbone(runner.model, backend=compile_backend)
        runner.logger.info(f'torch.compile: the {type(backbone).__name__} backbone runs compiled (backend '
                           f'{compile_backend}); it compiles on its first call')
    return runner
