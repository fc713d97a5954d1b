"""Evaluate a checkpoint: bbox/segm mAP (mmdet), mIoU (mmseg) or top-1 (mmpretrain), as the config's metric says.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--cfg-options ...]
                         [--launcher pytorch]
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import mmdualvit  # noqa: F401  (registers our models and the weights_only allow-list)
from mmdualvit.engine.launch import setup_distributed_cpu, trust_checkpoints


def parse_args():
    parser = argparse.ArgumentParser(description='Test a checkpoint with mmengine\'s Runner')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation log and metrics go')
    parser.add_argument('--show-dir', help='save pictures of the predictions into this directory')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle the checkpoint fully (weights_only=False): only for files you trust')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def enable_visualization(cfg: Config, show_dir: str) -> None:
    """Switch the config's visualization hook on and point its output at ``show_dir``."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise SystemExit('--show-dir needs a `visualization` entry in default_hooks (mmdet and mmseg bases have '
                         'one).')
    hook.draw = True
    if cfg.get('default_scope') == 'mmdet':
        hook.test_out_dir = osp.abspath(show_dir)  # mmdet's hook writes one picture per image there
    else:
        cfg.visualizer.save_dir = osp.abspath(show_dir)  # mmseg's hook goes through the visualizer's backends
        hook.interval = 1


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join('work_dirs',
                                                                   osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if args.show_dir:
        enable_visualization(cfg, args.show_dir)
    if args.trust_checkpoint:
        trust_checkpoints()
    setup_distributed_cpu(cfg)
    Runner.from_cfg(cfg).test()


if __name__ == '__main__':
    main()
