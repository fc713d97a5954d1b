"""Parameter and FLOP counting on top of mmengine's analyzer, with the operators it does not count.

mmengine's ``FlopAnalyzer`` (fvcore's counter) skips ``aten::lstm`` and ``aten::scaled_dot_product_attention``,
which carry most of Sequencer2D's and much of Dual-ViT's work. We add handles for both. Counts are multiply-adds
(MACs), the unit the papers and mmdet's ``get_flops`` call "FLOPs".
"""
import math
from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.config import Config


def _sizes(value) -> List[int]:
    return list(value.type().sizes())


def lstm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of ``aten::lstm``: per token and direction, 4 gates x (input + recurrent) = 4h(C + h)."""
    # aten::lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
    x, out = _sizes(inputs[0]), _sizes(outputs[0])
    bidirectional = inputs[7].toIValue()
    num_layers = inputs[4].toIValue()
    directions = 2 if bidirectional else 1
    hidden = out[-1] // directions
    tokens = x[0] * x[1]  # sequences x steps, whichever order
    first = directions * 4 * hidden * (x[2] + hidden)
    later = directions * 4 * hidden * (directions * hidden + hidden)
    return tokens * (first + (num_layers - 1) * later)


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of ``aten::scaled_dot_product_attention``: q kᵀ (N_q N_k d) plus attn v (N_q N_k d_v) per head."""
    q, k, v = (_sizes(t) for t in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def complexity(model: nn.Module, inputs: Tuple) -> Tuple[int, int]:
    """(MACs, parameters) of ``model(*inputs)``, counting LSTMs and fused attention."""
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(**{'aten::lstm': lstm_flop_jit, 'aten::scaled_dot_product_attention': sdpa_flop_jit})
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return analyzer.total(), parameter_count(model)['']


def build_from_config(config, cfg_options: Optional[dict] = None) -> Tuple[nn.Module, Config]:
    """Build a config's model on CPU with no pretrained weights (SyncBN reverted to BN); returns (model, cfg).

    ``config`` is a path, a package config such as ``'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'``, or a
    :class:`~mmengine.config.Config`.
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    if isinstance(config, str):
        if '::' in config:  # a config shipped inside a package, e.g. mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py
            from mmengine.hub import get_config
            cfg = get_config(config)
        else:
            cfg = Config.fromfile(config)
    else:
        cfg = config
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    cfg.model.backbone.init_cfg = None
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    rpn_head = getattr(model, 'rpn_head', None)
    if type(rpn_head).__name__ == 'EmbeddingRPNHead':
        # Sparse R-CNN's learned proposals are boxes only after their init (the whole image); PyTorch's default
        # Embedding init gives boxes of negative size, which RoIAlign refuses.
        rpn_head.init_weights()
    return model, cfg


def synthetic_batch(cfg, shape: Tuple[int, int], batch_size: int = 1, seed: int = 0) -> dict:
    """A batch of random images with random ground truth for the config's task (mmdet or mmseg)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = shape
    if cfg.default_scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        model = cfg.model
        head = model.roi_head.bbox_head if 'roi_head' in model else model.bbox_head
        if isinstance(head, (list, tuple)):  # one per stage (Cascade, Sparse R-CNN)
            head = head[0]
        with_mask = 'roi_head' in model and model.roi_head.get('mask_head') is not None
        torch.manual_seed(seed)
        batch = demo_mm_inputs(batch_size=batch_size, image_shapes=[(3, height, width)] * batch_size,
                               num_items=[3] * batch_size, num_classes=head.num_classes, with_mask=with_mask)
        batch['inputs'] = [x.float() for x in batch['inputs']]
        return batch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(batch_size):
        sample = SegDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape))
        labels = torch.randint(0, cfg.model.decode_head.num_classes, (1, height, width), generator=generator)
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=[torch.rand(3, height, width, generator=generator) * 255 for _ in samples],
                data_samples=samples)


class _TensorForward(nn.Module):
    """Runs an mmdet/mmseg model in ``mode='tensor'`` (backbone, neck and heads, no post-processing)."""

    def __init__(self, model, data_samples=None):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs):
        return self.model(inputs, self.data_samples, mode='tensor')


def model_complexity(model: nn.Module, shape: Tuple[int, int], backbone_only: bool = False) -> Tuple[int, int]:
    """(MACs, parameters) of a detector/segmentor (``mode='tensor'``) or its backbone on one (H, W) image."""
    samples = None
    if type(model).__module__.startswith('mmdet'):
        # a two-stage detector's RPN needs image metas to turn anchors into proposals
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        meta = dict(img_shape=tuple(shape), ori_shape=tuple(shape), pad_shape=tuple(shape),
                    batch_input_shape=tuple(shape), scale_factor=(1., 1.))
        sample = DetDataSample(metainfo=meta)
        # Sparse R-CNN's tensor-mode forward unpacks ground truth even though it does not use it.
        sample.gt_instances = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
        samples = [sample]
    target = model.backbone if backbone_only else _TensorForward(model, samples)
    with torch.no_grad():
        return complexity(target, (torch.rand(1, 3, *shape), ))
