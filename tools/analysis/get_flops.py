"""Parameters and GMACs of a whole detector/segmentor (or a bare backbone) from a config, LSTMs included.

    python tools/analysis/get_flops.py configs/maskrcnn_dualvit_s_coco.py --shape 800 1344
    python tools/analysis/get_flops.py configs/upernet_dualvit_s_ade20k.py --shape 512 512 --backbone-only
"""
import argparse

from mmengine.config import DictAction

import mmdualvit  # noqa: F401
from mmdualvit.analysis import model_complexity
from mmdualvit.building import build_from_config


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1344], metavar=('H', 'W'))
    parser.add_argument('--backbone-only', action='store_true')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    model, _ = build_from_config(args.config, args.cfg_options)
    macs, params = model_complexity(model.eval(), args.shape, args.backbone_only)
    gmacs, params = macs / 1e9, params / 1e6
    what = 'backbone' if args.backbone_only else 'model'
    print(f'{args.config} ({what}, input {args.shape[0]}x{args.shape[1]}): {params:.2f}M parameters, '
          f'{gmacs:.1f} GMACs (LSTM and attention included)')


if __name__ == '__main__':
    main()
