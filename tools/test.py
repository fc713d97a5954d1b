"""Evaluate a checkpoint: bbox/segm mAP (mmdet), mIoU (mmseg) or top-1 (mmpretrain), as the config's metric says.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--compile [BACKEND]]
                         [--cfg-options ...] [--launcher pytorch]
"""
import argparse
import os.path as osp

from mmengine.config import Config

import mmdualvit  # noqa: F401  (registers our models and the weights_only allow-list)
from mmdualvit.engine.launch import add_common_args, build_runner, distributed_session, load_config


def parse_args():
    parser = argparse.ArgumentParser(description='Test a checkpoint with mmengine\'s Runner')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation log and metrics go (default: work_dirs/<config '
                        'name>/test, never the training\'s work dir itself)')
    parser.add_argument('--show-dir', help='save pictures of the predictions into this directory')
    add_common_args(parser)
    return parser.parse_args()


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
    cfg = load_config(args, subdir='test')
    cfg.load_from = args.checkpoint
    if args.show_dir:
        enable_visualization(cfg, args.show_dir)
    with distributed_session(cfg):
        build_runner(cfg, args.compile).test()


if __name__ == '__main__':
    main()
