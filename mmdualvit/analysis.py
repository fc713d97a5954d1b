"""Parameter and FLOP counting on top of mmengine's analyzer, with the operators it does not count.

mmengine's ``FlopAnalyzer`` (fvcore's counter) skips ``aten::lstm`` and ``aten::scaled_dot_product_attention``,
which carry most of Sequencer2D's and much of Dual-ViT's work. We add handles for both. Counts are multiply-adds
(MACs), the unit the papers and mmdet's ``get_flops`` call "FLOPs".
"""
import math
from typing import Any, List, Tuple

import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count


def _sizes(value) -> List[int]:
    return list(value.type().sizes())


def lstm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of ``aten::lstm``: per token and direction, 4 gates x (input + recurrent) = 4h(C + h)."""
    # aten::lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
    x, out = _sizes(inputs[0]), _sizes(outputs[0])
    bidirectional, batch_first = inputs[7].toIValue(), inputs[8].toIValue()
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
