"""Parameter and FLOP counting on top of mmengine's analyzer, with the operators it does not count.

mmengine's ``FlopAnalyzer`` (fvcore's counter) skips ``aten::lstm`` and ``aten::scaled_dot_product_attention``,
which carry most of Sequencer2D's and much of Dual-ViT's work. We add handles for both. Counts are multiply-adds
(MACs), the unit the papers and mmdet's ``get_flops`` call "FLOPs".
"""
import math
from typing import Any, List, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count


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
