"""Parameters and GMACs of a whole detector/segmentor (or a bare backbone) from a config, LSTMs included.

    python tools/analysis/get_flops.py configs/maskrcnn_dualvit_s_coco.py --shape 800 1344
    python tools/analysis/get_flops.py configs/upernet_dualvit_s_ade20k.py --shape 512 512 --backbone-only
"""
import argparse

import torch
import torch.nn as nn
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope

import mmdualvit  # noqa: F401
from mmdualvit.analysis import complexity


class _TensorForward(nn.Module):
    """Runs an mmdet/mmseg model in ``mode='tensor'`` (backbone, neck and heads, no post-processing)."""

    def __init__(self, model, data_samples=None):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs):
        return self.model(inputs, self.data_samples, mode='tensor')


def _data_samples(shape):
    """Image metas for a two-stage detector's tensor-mode forward (its RPN turns anchors into proposals)."""
    from mmdet.structures import DetDataSample
    meta = dict(img_shape=tuple(shape), ori_shape=tuple(shape), pad_shape=tuple(shape),
                batch_input_shape=tuple(shape), scale_factor=(1., 1.))
    return [DetDataSample(metainfo=meta)]


def build(config: str, cfg_options=None) -> nn.Module:
    """Build the config's model on CPU in eval mode, with no pretrained weights."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    cfg.model.backbone.init_cfg = None
    return revert_sync_batchnorm(MODELS.build(cfg.model)).eval()


def measure(config: str, shape, backbone_only=False, cfg_options=None):
    """(GMACs, M parameters) of the model in ``config`` on one image of ``shape`` (H, W)."""
    model = build(config, cfg_options)
    samples = _data_samples(shape) if type(model).__module__.startswith('mmdet') else None
    target = model.backbone if backbone_only else _TensorForward(model, samples)
    with torch.no_grad():
        macs, params = complexity(target, (torch.rand(1, 3, *shape), ))
    return macs / 1e9, params / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1344], metavar=('H', 'W'))
    parser.add_argument('--backbone-only', action='store_true')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    gmacs, params = measure(args.config, args.shape, args.backbone_only, args.cfg_options)
    what = 'backbone' if args.backbone_only else 'model'
    print(f'{args.config} ({what}, input {args.shape[0]}x{args.shape[1]}): {params:.2f}M parameters, '
          f'{gmacs:.1f} GMACs (LSTM and attention included)')


if __name__ == '__main__':
    main()
