"""Train a detector, segmentor or classifier from an mmdualvit (or any OpenMMLab) config.

    python tools/train.py configs/maskrcnn_dualvit_s_coco.py [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--overwrite-work-dir] [--compile [BACKEND]] [--cfg-options key=value ...]
                          [--launcher pytorch]

The config's ``default_scope`` (mmdet, mmseg or mmpretrain) decides which library's components are used.
"""
import argparse

import mmdualvit  # noqa: F401  (registers our models and the weights_only allow-list)
from mmdualvit.engine.launch import (adapt_amp_to_cpu, add_common_args, build_runner, distributed_session, enable_amp,
                                     load_config)
from mmdualvit.engine.runner import training_lock


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model with mmengine\'s Runner')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in the work dir when no CKPT is given')
    parser.add_argument('--overwrite-work-dir', action='store_true',
                        help='start (or resume from an older checkpoint) in a work dir that holds checkpoints, letting '
                             'this run overwrite them (same as --cfg-options overwrite_work_dir=True)')
    parser.add_argument('--amp', action='store_true', help='mixed precision (fp16 on GPU, bfloat16 on CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true', help='scale the lr by the actual total batch size')
    add_common_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    if args.amp:
        enable_amp(cfg)
    adapt_amp_to_cpu(cfg)
    if args.overwrite_work_dir:
        cfg.overwrite_work_dir = True
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg:
            raise SystemExit(f'{args.config} has no auto_scale_lr.base_batch_size; set it to use --auto-scale-lr.')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    with distributed_session(cfg), training_lock(cfg.work_dir):  # before the runner writes into the work dir
        build_runner(cfg, args.compile).train()


if __name__ == '__main__':
    main()
