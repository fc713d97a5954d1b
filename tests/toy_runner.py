"""A seconds-fast :class:`mmdualvit.engine.StrictRunner` on a two-parameter model, for the checkpoint tests.

Also runnable as a script (``python tests/toy_runner.py WORK_DIR MAX_ITERS [--resume]``) so that tests can kill it,
and as a subprocess held inside a checkpoint write (:func:`start_paused_writer`).
"""
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from torch.utils.data import DataLoader, Dataset

import mmdualvit  # noqa: F401  (registers the runner and hooks)
from mmdualvit.engine import StrictRunner


class LineModel(BaseModel):
    """y = w x + b with a BatchNorm buffer, so checkpoints hold parameters and buffers."""

    def __init__(self, width: int = 1):
        super().__init__()
        self.linear = torch.nn.Linear(width, 1)
        self.norm = torch.nn.BatchNorm1d(1)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.norm(self.linear(inputs))
        if mode == 'loss':
            return {'loss': ((out - labels) ** 2).mean()}
        return out


class LineData(Dataset):
    """64 points of y = 2x + 1; with ``nan_at``, the batches (of 4, in order) of those 1-based iterations get a NaN
    label, so their loss is NaN."""

    def __init__(self, nan_at=()):
        self.nan_at = set(nan_at)

    def __len__(self):
        return 64

    def __getitem__(self, index):
        x = torch.tensor([index / 64.])
        y = torch.full_like(x, float('nan')) if index // 4 + 1 in self.nan_at else 2 * x + 1
        return dict(inputs=x, labels=y)


class LineError(BaseMetric):
    """Mean squared error of the predictions, for test/val runs."""
    default_prefix = 'toy'

    def process(self, data_batch, data_samples):
        self.results.append(((torch.stack(data_samples) - data_batch['labels']) ** 2).mean().item())

    def compute_metrics(self, results):
        return dict(mse=sum(results) / len(results))


def build_runner(work_dir, max_iters=4, resume=False, load_from=None, width=1, interval=2, lr=0.1, nan_at=(),
                 finite_loss=dict(type='mmdualvit.FiniteLossHook'), test=False, val_metric=None, distributed=False,
                 checkpoint_options=None, optimizer=None, **cfg):
    """A StrictRunner saving through :class:`PortableCheckpointHook` every ``interval`` iterations (more hook
    arguments in ``checkpoint_options``), with the :class:`FiniteLossHook` of our configs (``finite_loss=None``
    leaves it out); ``optimizer`` replaces SGD(lr); ``test=True`` adds a test loop, ``val_metric`` a validation with
    that metric every ``interval`` iterations; ``distributed=True`` runs in the
    (gloo) process group the caller initialised, every rank on the same batches."""
    data = DataLoader(LineData(nan_at), batch_size=4, shuffle=False)
    testing = dict(test_dataloader=data, test_cfg=dict(), test_evaluator=[LineError()]) if test else {}
    if val_metric is not None:
        testing.update(val_dataloader=data, val_cfg=dict(), val_evaluator=[val_metric])
    if distributed:
        testing.update(launcher='pytorch')
        cfg.update(model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None))
    return StrictRunner(
        model=LineModel(width), work_dir=str(work_dir), experiment_name=f'toy_{uuid.uuid4().hex[:8]}',
        train_dataloader=data,
        optim_wrapper=dict(optimizer=optimizer or dict(type='SGD', lr=lr)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=interval),
        default_hooks=dict(checkpoint=dict(type='mmdualvit.PortableCheckpointHook', interval=interval,
                                           by_epoch=False, max_keep_ckpts=cfg.pop('max_keep_ckpts', -1),
                                           **(checkpoint_options or {})),
                           logger=dict(type='LoggerHook', interval=1), finite_loss=finite_loss),
        param_scheduler=cfg.pop('param_scheduler', None), custom_hooks=cfg.pop('custom_hooks', None),
        resume=resume, load_from=load_from, default_scope='mmengine', cfg=dict(cfg), env_cfg=dict(dist_cfg=dict()),
        **testing)


_PAUSED_WRITER = '''
import os, pathlib, sys, time
real_fsync = os.fsync
def fsync(fd):
    real_fsync(fd)
    name = os.readlink(f"/proc/self/fd/{fd}")
    if ".iter_4.pth." in name:
        print("INSIDE", name, flush=True)
        release = pathlib.Path(sys.argv[3]) if len(sys.argv) > 3 else None
        while release is None or not release.exists():
            time.sleep(0.05)
os.fsync = fsync
from tests.toy_runner import build_runner
build_runner(sys.argv[1], max_iters=int(sys.argv[2])).train()
print("DONE", flush=True)
'''


def start_paused_writer(work_dir, max_iters: int, release=None, timeout: float = 300):
    """Train in a subprocess that is held inside the atomic write of iter_4.pth (data written and flushed, not yet
    renamed into place) until the file ``release`` exists, or, without one, until it is killed; it is killed after
    ``timeout`` seconds in any case. Returns the process (stdout piped, stderr in ``<work_dir>.stderr``; it prints
    DONE when its training returns) and the path of the temporary."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), PYTHONWARNINGS='ignore')
    args = [sys.executable, '-c', _PAUSED_WRITER, str(work_dir), str(max_iters)] + ([str(release)] if release else [])
    with open(f'{work_dir}.stderr', 'w') as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    for line in proc.stdout:
        if line.startswith('INSIDE'):
            return proc, Path(line.split(maxsplit=1)[1].strip())
    raise AssertionError(f'the training ended (rc {proc.wait()}) without writing iter_4.pth: '
                         f'{Path(f"{work_dir}.stderr").read_text()[-3000:]}')


if __name__ == '__main__':
    build_runner(sys.argv[1], max_iters=int(sys.argv[2]), resume='--resume' in sys.argv).train()
