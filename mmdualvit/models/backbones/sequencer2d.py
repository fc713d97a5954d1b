"""Sequencer2D backbone for dense prediction.

Tatsunami & Taki: "Sequencer: Deep LSTM for Image Classification", NeurIPS 2022, https://arxiv.org/abs/2205.01972.

Token mixing is a BiLSTM2D: a bidirectional LSTM down every column and one along every row, concatenated and
projected back to the channel width. Parameter names follow the official release (``blocks.{stage}.{block}...``,
the downsampling conv being the last entry of the preceding stage), so official checkpoints load unchanged; timm's
names are converted by :meth:`Sequencer2D.convert_checkpoint`, which every load of the model runs.

The official stages run at strides 7/14/14/14. Detection and segmentation necks expect 4/8/16/32, so the
default ``pyramid='resample'`` resamples the stage outputs onto that grid (see :class:`Sequencer2D`).
"""
import math
import re
from collections import Counter, OrderedDict
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule

from ...registry import MODELS
from ..utils import checkpointed
from .base import BaseBackbone
from .resample import resample_bilinear

NORM_EPS = 1e-6
PYRAMID_STRIDES = (4, 8, 16, 32)
_TIMM_BLOCK = re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.')
_TIMM_DOWN = re.compile(r'^stages\.(\d+)\.downsample\.down\.')


class BiLSTM2D(nn.Module):
    """Vertical and horizontal bidirectional LSTMs over an NHWC map, concatenated, then ``fc`` back to C.

    Every column (rows) of every image goes through one batched ``nn.LSTM`` call, no Python loop.

    Args:
        dim (int): Channels C.
        hidden_size (int): LSTM hidden size h (output 4h channels before ``fc``).
    """

    def __init__(self, dim: int, hidden_size: int):
        super().__init__()
        self.rnn_v = nn.LSTM(dim, hidden_size, batch_first=True, bidirectional=True)
        self.rnn_h = nn.LSTM(dim, hidden_size, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(4 * hidden_size, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        vertical, _ = self.rnn_v(x.transpose(1, 2).reshape(b * w, h, c))
        horizontal, _ = self.rnn_h(x.reshape(b * h, w, c))
        # fc(cat([v, h])) computed as fc_h(h) + fc_v(v): the vertical half is projected in its own (B, W, H) layout
        # and added transposed, which saves the concatenation and the transpose copy of the wider LSTM output.
        weight_v, weight_h = self.fc.weight.split(vertical.shape[-1], dim=1)
        out = F.linear(horizontal, weight_h, self.fc.bias).view(b, h, w, c)
        return out.add_(F.linear(vertical, weight_v).view(b, w, h, c).transpose(1, 2))


class ChannelMLP(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Sequencer2DBlock(BaseModule):
    """x + BiLSTM2D(LN(x)), then x + MLP(LN(x)), on NHWC maps.

    Args:
        dim (int): Channels.
        hidden_size (int): LSTM hidden size.
        mlp_ratio (float): MLP hidden ratio.
        drop_path (float): Stochastic depth rate.
    """

    def __init__(self, dim: int, hidden_size: int, mlp_ratio: float, drop_path: float = 0.):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.rnn_tokens = BiLSTM2D(dim, hidden_size)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp_channels = ChannelMLP(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.rnn_tokens(self.norm1(x)))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


class SequencerDownsample(nn.Module):
    """Patch-merging conv (kernel = stride) on NHWC maps."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.down = nn.Conv2d(in_channels, out_channels, stride, stride)

    def forward(self, x):
        return self.down(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SequencerStem(nn.Module):
    """Non-overlapping patch embedding (conv, kernel = stride), no norm."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, patch_size, patch_size)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)


@MODELS.register_module()
class Sequencer2D(BaseBackbone):
    """Sequencer2D backbone (`paper <https://arxiv.org/abs/2205.01972>`_).

    Args:
        arch (str | dict): ``'s'``, ``'m'``, ``'l'`` (or ``'small'``, ``'medium'``, ``'large'``), or a dict with
            the keys of the :attr:`arch_zoo` entries, one entry per stage each: ``depths``, ``patch_sizes`` (the
            stem's and each downsampling conv's kernel = stride), ``embed_dims``, ``hidden_sizes`` (LSTM hidden
            size) and ``mlp_ratios``. Every value is checked when the model is built. Defaults to ``'s'``.
        in_channels (int): Input channels. Defaults to 3.
        out_indices (Sequence[int]): Stages to return. Defaults to ``(0, 1, 2, 3)``.
        pyramid (str): How stage outputs are returned.

            - ``'native'``: the official stage outputs at strides 7/14/14/14 (each the output of the stage's last
              block, before the next downsampling conv; none is normalised, stage 4 included). The input is
              floored to a multiple of the strides like the official stem.
            - ``'resample'`` (default): parameter-free. The input is zero-padded bottom/right (as mmdet pads) so
              no pixel is floored away, the last stage is normalised with the pretrained ``norm``, and every
              stage is bilinearly resampled (antialiased when shrinking) with exact stride geometry to strides
              4/8/16/32: output i is ceil(H/s) x ceil(W/s) for s = 4, 8, 16, 32 of the given input. Needs 4
              stages.
        drop_path_rate (float): Stochastic depth in [0, 1) with the official linear per-block rule
            ``rate * index / (num_blocks - 1)`` (timm uses one rate for all blocks).
        frozen_stages (int): What to freeze (eval mode, ``requires_grad=False``, kept so on every ``train()``),
            as mmdet's ResNet and Swin: ``-1`` nothing (default); ``0`` the stem (``stem``, the stride-7 patch
            embedding); ``k`` in 1-4 the stem and stages 1..k, each stage with the downsampling conv that starts
            it (stored as ``blocks.{i-1}.{n}.down``, the official layout) and the last stage with the final
            ``norm``.
        with_cp (bool): Gradient checkpointing per block.
        init_cfg (dict | list[dict], optional): Any form mmengine accepts. ``Pretrained`` entries load official,
            timm or converted checkpoints through :func:`mmdualvit.checkpoint.load_pretrained`, which refuses
            partial loads; other entries apply after the official random init. Unknown types are errors.

    There is no ``norm_eval``: the model has LayerNorms only, no BatchNorm for it to act on.

    Inputs are float batches (B, in_channels, H, W) in the weights' dtype (any float dtype but float64 under
    ``torch.autocast``), of at least 14x14 pixels with ``pyramid='native'``; anything else is refused with a
    message saying what to pass.

    Examples:
        >>> import torch
        >>> from mmdualvit.models import Sequencer2D
        >>> model = Sequencer2D(arch='s').eval()
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 100, 130))]
        [(1, 192, 25, 33), (1, 384, 13, 17), (1, 384, 7, 9), (1, 384, 4, 5)]
    """
    _common = dict(patch_sizes=[7, 2, 1, 1], embed_dims=[192, 384, 384, 384], hidden_sizes=[48, 96, 96, 96],
                   mlp_ratios=[3, 3, 3, 3])
    arch_zoo = {
        **dict.fromkeys(['s', 'small'], dict(depths=[4, 3, 8, 3], **_common)),
        **dict.fromkeys(['m', 'medium'], dict(depths=[4, 3, 14, 3], **_common)),
        **dict.fromkeys(['l', 'large'], dict(depths=[8, 8, 16, 4], **_common)),
    }
    pyramid_modes = ('native', 'resample')

    def __init__(self,
                 arch: Union[str, dict] = 's',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 pyramid: str = 'resample',
                 drop_path_rate: float = 0.,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None):
        super().__init__(arch, in_channels, out_indices, frozen_stages, drop_path_rate, with_cp, init_cfg=init_cfg)
        if pyramid not in self.pyramid_modes:
            raise ValueError(f'Sequencer2D: pyramid must be one of {self.pyramid_modes}, got {pyramid!r}.')
        if pyramid != 'native' and self.num_stages != len(PYRAMID_STRIDES):
            raise ValueError(f"Sequencer2D: pyramid={pyramid!r} needs 4 stages; use pyramid='native'.")
        self.pyramid = pyramid
        settings = self.arch_settings
        dims, patch_sizes = self.embed_dims, settings['patch_sizes']
        self.native_strides = [math.prod(patch_sizes[:i + 1]) for i in range(self.num_stages)]
        if pyramid == 'native':
            self.min_input_size = self.native_strides[-1]
            self.min_input_reason = (f"pyramid='native' floors the input to the stride-{self.native_strides[-1]} "
                                     f"grid of its last stage; pyramid='resample' pads instead")

        self.stem = SequencerStem(in_channels, dims[0], patch_sizes[0])
        total = sum(self.depths)
        stages, start = [], 0
        for i, depth in enumerate(self.depths):
            stage = [
                Sequencer2DBlock(dims[i], settings['hidden_sizes'][i], settings['mlp_ratios'][i],
                                 self.drop_path_rate * (start + j) / max(total - 1, 1)) for j in range(depth)
            ]
            if i < self.num_stages - 1:  # official layout: the next stage's downsampling closes this stage
                stage.append(SequencerDownsample(dims[i], dims[i + 1], patch_sizes[i + 1]))
            stages.append(nn.ModuleList(stage))
            start += depth
        self.blocks = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(dims[-1], eps=NORM_EPS)
        self._freeze_stages()

    def _official_init(self):
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.normal_(module.bias, std=1e-6) if 'mlp' in name else nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                nn.init.trunc_normal_(module.weight, std=math.sqrt(1.0 / fan_in) / .87962566103423978)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LSTM):
                bound = 1.0 / math.sqrt(module.hidden_size)
                for weight in module.parameters():
                    nn.init.uniform_(weight, -bound, bound)

    @classmethod
    def convert_checkpoint(cls, state_dict):
        """Sequencer2D state_dict in official or timm naming -> official naming (ours); idempotent.

        timm names ``stages.i.blocks.j``, ``stages.i.downsample.down`` and ``head.fc``; the official release (and
        this class) names ``blocks.i.j``, ``blocks.{i-1}.{n_{i-1}}.down`` (the downsampling conv closes the
        previous stage, n = blocks in that stage) and ``head``.
        """
        blocks_per_stage = Counter()
        for key in state_dict:
            match = _TIMM_BLOCK.match(key)
            if match:
                stage, block = int(match.group(1)), int(match.group(2))
                blocks_per_stage[stage] = max(blocks_per_stage[stage], block + 1)
        out = OrderedDict()
        for key, value in state_dict.items():
            new = _TIMM_BLOCK.sub(r'blocks.\1.\2.', key)
            match = _TIMM_DOWN.match(key)
            if match:
                stage = int(match.group(1))
                new = f'blocks.{stage - 1}.{blocks_per_stage[stage - 1]}.down.' + key[match.end():]
            if new.startswith('head.fc.'):
                new = 'head.' + new[len('head.fc.'):]
            out[new] = value
        return out

    @classmethod
    def is_own_checkpoint(cls, state_dict) -> bool:
        """Whether converted ``state_dict`` has Sequencer2D's stem and BiLSTM token mixers (for the converter tool)."""
        return 'stem.proj.weight' in state_dict and any('.rnn_tokens.' in k for k in state_dict)

    def checkpoint_unused_prefixes(self):
        """The ImageNet classifier."""
        return ('head.', )

    def _stem_modules(self) -> List[nn.Module]:
        return [self.stem]

    def _stage_modules(self, i: int) -> List[nn.Module]:
        modules = list(self.blocks[i][:self.depths[i]])
        if i > 0:
            modules.append(self.blocks[i - 1][-1])  # the downsampling conv that starts stage i
        if i == self.num_stages - 1:
            modules.append(self.norm)
        return modules

    def forward_native(self, x: torch.Tensor) -> List[torch.Tensor]:
        """All stage outputs as NHWC tensors at the native strides, unnormalised (the official layout)."""
        x = self.stem(x)
        outs = []
        for i, depth in enumerate(self.depths):
            if i > 0:
                x = self.blocks[i - 1][-1](x)
            for block in self.blocks[i][:depth]:
                x = checkpointed(block, self.with_cp, x)
            outs.append(x)
        return outs

    def dynamic_export_problem(self, shape: Tuple[int, int]) -> Optional[str]:
        if self.pyramid == 'native':
            return None
        return (f"Sequencer2D(pyramid='{self.pyramid}') cannot be exported with dynamic shapes: its padding, crops "
                f'and resampling weights follow from the input size in Python, so a traced graph is valid at the '
                f'export shape only. Export once per input size you will run (--shape H W, without --dynamic), or '
                f"use pyramid='native'.")

    def forward(self, x: torch.Tensor):
        """Return the maps of ``out_indices`` as NCHW tensors (see ``pyramid`` for strides and sizes)."""
        self._check_input(x)
        height, width = x.shape[-2:]
        if self.pyramid == 'native':
            outs = self.forward_native(x)
            return tuple(outs[i].permute(0, 3, 1, 2) for i in self.out_indices)

        # Pad so that (a) no pixel is floored away by the stride-7/14 convs and (b) every target level's
        # ceil(size / stride) cells lie inside the padded extent, which makes the resampling exact-geometry.
        coarsest, native_max = PYRAMID_STRIDES[-1], self.native_strides[-1]
        padded = [native_max * math.ceil(coarsest * math.ceil(s / coarsest) / native_max) for s in (height, width)]
        x = F.pad(x, (0, padded[1] - width, 0, padded[0] - height))
        native = self.forward_native(x)
        native[-1] = self.norm(native[-1])
        outs = []
        for i in self.out_indices:
            level = native[i].permute(0, 3, 1, 2)
            scale = self.native_strides[i] / PYRAMID_STRIDES[i]
            size = (math.ceil(height / PYRAMID_STRIDES[i]), math.ceil(width / PYRAMID_STRIDES[i]))
            # the exact stride ratio sets the sampling grid; the padding is cropped (shrinking exports to ONNX)
            level = resample_bilinear(level, scale, size)
            outs.append(level)
        return tuple(outs)
