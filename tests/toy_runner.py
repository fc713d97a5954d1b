"""A seconds-fast :class:`mmdualvit.engine.StrictRunner` on a two-parameter model, for the checkpoint tests.

Also runnable as a script (``python tests/toy_runner.py WORK_DIR MAX_ITERS [--resume]``) so that tests can kill it.
"""
import sys
import uuid

import torch
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
    def __len__(self):
        return 64

    def __getitem__(self, index):
        x = torch.tensor([index / 64.])
        return dict(inputs=x, labels=2 * x + 1)


def build_runner(work_dir, max_iters=4, resume=False, load_from=None, width=1, interval=2, **cfg):
    """A StrictRunner saving through :class:`PortableCheckpointHook` every ``interval`` iterations."""
    return StrictRunner(
        model=LineModel(width), work_dir=str(work_dir), experiment_name=f'toy_{uuid.uuid4().hex[:8]}',
        train_dataloader=DataLoader(LineData(), batch_size=4, shuffle=False),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='mmdualvit.PortableCheckpointHook', interval=interval,
                                           by_epoch=False, max_keep_ckpts=cfg.pop('max_keep_ckpts', -1)),
                           logger=dict(type='LoggerHook', interval=1)),
        param_scheduler=cfg.pop('param_scheduler', None),
        resume=resume, load_from=load_from, default_scope='mmengine', cfg=dict(cfg), env_cfg=dict(dist_cfg=dict()))


if __name__ == '__main__':
    build_runner(sys.argv[1], max_iters=int(sys.argv[2]), resume='--resume' in sys.argv).train()
