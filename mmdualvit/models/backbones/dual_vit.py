"""Dual-ViT backbone.

Yao, Li, Pan, Wang, Zhang, Mei: "Dual Vision Transformer", TPAMI 2023, https://arxiv.org/abs/2207.04976.

Stages 1-2 run a pixel pathway and a semantic pathway (a few global semantic tokens) side by side; stages 3-4
concatenate the semantic tokens to the pixel tokens and run global attention over both. Module and parameter names
follow the official ImageNet checkpoints (``block1.0.attn.q_proxy``, ``patch_embed1.conv.1`` ...), so those load
without renaming. Every attention, the semantic tokens' initial cross-attention included, runs through
:func:`mmdualvit.models.utils.attention`: ``scaled_dot_product_attention`` by default, the explicit softmax(QKᵀ)V
of the official code with ``fused_attention=False``.
"""
import math
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_

from ...registry import MODELS
from ..utils import attention, checkpointed, merge_heads, split_heads
from .base import BaseBackbone

# Block and stage norms use eps 1e-6; the LayerNorms inside attention, embeddings and the stem use torch's 1e-5.
BLOCK_NORM_EPS = 1e-6
SEMANTIC_POOL = 7  # the semantic tokens come from a 7x7 average pool of the stride-4 map
QUERY_GRID = 8  # the learned semantic query is an 8x8 grid


def _block_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)


def _tokens_to_map(x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, *hw)


class _DepthwiseConv(nn.Module):
    """3x3 depthwise conv on a token sequence (holds ``dwconv`` so checkpoint keys read ``mlp.dwconv.dwconv``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        return self.dwconv(_tokens_to_map(x, hw)).flatten(2).transpose(1, 2)


class ConvFFN(nn.Module):
    """fc1 -> 3x3 depthwise conv -> GELU -> fc2 on pixel tokens (PVTv2's FFN).

    Args:
        dim (int): Token channels.
        hidden_dim (int): Hidden channels.
        with_semantic_ffn (bool): Also own ``fc_proxy`` (Linear 2C, GELU, Linear), the FFN applied to the semantic
            tokens that follow the pixel tokens in stages 3-4.
    """

    def __init__(self, dim: int, hidden_dim: int, with_semantic_ffn: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = _DepthwiseConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.fc_proxy = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                      nn.Linear(2 * dim, dim)) if with_semantic_ffn else None

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        num_pixels = hw[0] * hw[1]
        pixels = self.fc2(self.act(self.dwconv(self.fc1(x[:, :num_pixels]), hw)))
        if self.fc_proxy is None:
            return pixels
        return torch.cat([pixels, self.fc_proxy(x[:, num_pixels:])], dim=1)


class DualAttention(nn.Module):
    """Stage 1-2 token mixer: semantic self-attention, semantics <- pixels, semantic MLP, pixels <- semantics.

    Args:
        dim (int): Channels.
        num_heads (int): Attention heads.
        drop_path (float): Stochastic depth applied to the three semantic updates.
        fused (bool): Use ``scaled_dot_product_attention`` (else the explicit attention matrix).
    """

    def __init__(self, dim: int, num_heads: int, drop_path: float = 0., fused: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.fused = fused
        # pixel queries attending to the semantic tokens
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proxy_ln = nn.LayerNorm(dim)
        # semantic queries attending to the pixels
        self.q_proxy_ln = nn.LayerNorm(dim)
        self.q_proxy = nn.Linear(dim, dim)
        self.kv_proxy = nn.Linear(dim, 2 * dim)
        # semantic self-attention and MLP
        self.qkv_proxy = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 3 * dim))
        self.p_ln = nn.LayerNorm(dim)
        self.mlp_proxy = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(inplace=True), nn.Linear(4 * dim, dim))
        self.gamma1 = nn.Parameter(torch.full((dim, ), 1e-6))
        self.gamma2 = nn.Parameter(torch.full((dim, ), 1e-6))
        self.gamma3 = nn.Parameter(torch.full((dim, ), 1e-6))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _attend(self, q, k, v):
        heads = self.num_heads
        return merge_heads(attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads),
                                     self.fused))

    def forward(self, x: torch.Tensor, semantics: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv_proxy(semantics).chunk(3, dim=-1)
        semantics = semantics + self.drop_path(self.gamma1 * self._attend(q, k, v))

        k, v = self.kv_proxy(x).chunk(2, dim=-1)
        q = self.q_proxy(self.q_proxy_ln(semantics))
        semantics = semantics + self.drop_path(self.gamma2 * self._attend(q, k, v))
        semantics = semantics + self.drop_path(self.gamma3 * self.mlp_proxy(self.p_ln(semantics)))

        k, v = self.kv(self.proxy_ln(semantics)).chunk(2, dim=-1)
        x = self.proj(self._attend(self.q(x), k, v))
        return x, semantics


class GlobalAttention(nn.Module):
    """Stage 3-4 token mixer: multi-head self-attention over pixel and semantic tokens together.

    Also the class attention of the ImageNet head (``mmdualvit.DualViTClsHead``), where only the class token
    queries: pass it as ``queries``.
    """

    def __init__(self, dim: int, num_heads: int, fused: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.fused = fused
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, queries: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every token of ``x`` (or each of ``queries``) attends to all tokens of ``x``."""
        heads = self.num_heads
        k, v = self.kv(x).chunk(2, dim=-1)
        q = self.q(x if queries is None else queries)
        out = attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), self.fused)
        return self.proj(merge_heads(out))


class DualBlock(BaseModule):
    """Stage 1-2 block: pixel and semantic tokens updated by :class:`DualAttention`, then a ConvFFN on pixels.

    Args:
        dim (int): Channels.
        num_heads (int): Attention heads.
        mlp_ratio (float): FFN hidden ratio.
        drop_path (float): Stochastic depth rate.
        fused (bool): Use ``scaled_dot_product_attention`` (else the explicit attention matrix).
    """

    def __init__(self, dim, num_heads, mlp_ratio, drop_path=0., fused=True):
        super().__init__()
        self.norm1 = _block_norm(dim)
        self.attn = DualAttention(dim, num_heads, drop_path, fused)
        self.norm2 = _block_norm(dim)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio))
        self.gamma1 = nn.Parameter(torch.full((dim, ), 1e-6))
        self.gamma2 = nn.Parameter(torch.full((dim, ), 1e-6))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, semantics, hw):
        mixed, semantics = self.attn(self.norm1(x), semantics)
        x = x + self.drop_path(self.gamma1 * mixed)
        x = x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), hw))
        return x, semantics


class MergeBlock(BaseModule):
    """Stage 3-4 block over ``[pixel tokens; semantic tokens]``.

    Args:
        dim (int): Channels.
        num_heads (int): Attention heads.
        mlp_ratio (float): FFN hidden ratio.
        drop_path (float): Stochastic depth rate.
        drop_semantics (bool): Drop the semantic tokens after attention (the dense models' last block, whose
            output is the last feature map). The ImageNet checkpoint's ``fc_proxy`` of that block is then unused.
        fused (bool): Use ``scaled_dot_product_attention`` (else the explicit attention matrix).
    """

    def __init__(self, dim, num_heads, mlp_ratio, drop_path=0., drop_semantics=False, fused=True):
        super().__init__()
        self.drop_semantics = drop_semantics
        self.norm1 = _block_norm(dim)
        self.attn = GlobalAttention(dim, num_heads, fused)
        self.norm2 = _block_norm(dim)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), with_semantic_ffn=not drop_semantics)
        self.gamma1 = nn.Parameter(torch.full((dim, ), 1e-6))
        self.gamma2 = nn.Parameter(torch.full((dim, ), 1e-6))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, hw):
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        if self.drop_semantics:
            x = x[:, :hw[0] * hw[1]]
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), hw))


class DualViTStem(nn.Module):
    """Stride-4 stem: conv7x7/2 + 2 conv3x3, each with BN and ReLU, then conv3x3/2 and LayerNorm (tokens out)."""

    def __init__(self, in_channels: int, hidden_dim: int, out_channels: int, norm_cfg: dict):
        super().__init__()
        layers = []
        for i, (kernel, stride) in enumerate([(7, 2), (3, 1), (3, 1)]):
            layers += [
                nn.Conv2d(in_channels if i == 0 else hidden_dim, hidden_dim, kernel, stride, kernel // 2,
                          bias=False),
                build_norm_layer(norm_cfg, hidden_dim)[1],
                nn.ReLU(inplace=True)
            ]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hidden_dim, out_channels, 3, 2, 1)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x):
        x = self.proj(self.conv(x))
        hw = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), tuple(hw)


class DualViTDownsample(nn.Module):
    """conv3x3/2 + LayerNorm between stages (tokens out)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x):
        x = self.proj(x)
        hw = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), tuple(hw)


class SemanticEmbed(nn.Module):
    """Linear + LayerNorm taking the semantic tokens to the next stage's width."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj_proxy = nn.Sequential(nn.Linear(in_channels, out_channels), nn.LayerNorm(out_channels))

    def forward(self, semantics):
        return self.proj_proxy(semantics)


@MODELS.register_module()
class DualViT(BaseBackbone):
    """Dual Vision Transformer backbone (`paper <https://arxiv.org/abs/2207.04976>`_).

    Args:
        arch (str | dict): ``'s'``, ``'b'``, ``'l'`` (or ``'small'``, ``'base'``, ``'large'``), or a dict with
            the keys of the :attr:`arch_zoo` entries: ``stem_hidden_dim`` (int), and per stage (4 entries each)
            ``embed_dims``, ``depths``, ``num_heads`` (each dividing its ``embed_dims`` entry) and ``mlp_ratios``
            (stage 3 alternates ``r`` and ``r - 1``, so its ratio must exceed 1). Every value is checked when the
            model is built. Defaults to ``'s'``.
        in_channels (int): Input channels. Defaults to 3.
        out_indices (Sequence[int]): Stages whose normalised NCHW maps (strides 4/8/16/32) are returned.
        out_type (str): ``'featmap'`` (dense backbone, as the official detection/segmentation code) or ``'raw'``
            (ImageNet classifier path: the last block keeps the semantic tokens, and the last stage returns the
            unnormalised tokens as a pair ``(pixels (B, N4, C4), semantics (B, M, C4))``, for
            ``mmdualvit.DualViTClsHead``).
        drop_path_rate (float): Stochastic depth, linear over all blocks, in [0, 1). The official detection
            backbone uses 0.15; the segmentation configs 0.15 (S) and 0.3 (B).
        stem_norm_cfg (dict): Norm of the three stem convs. The official detection code uses BN with frozen affine
            parameters (the default); the segmentation code uses ``SyncBN`` with ``requires_grad=True``.
        frozen_stages (int): What to freeze (eval mode, ``requires_grad=False``, kept so on every ``train()``),
            as mmdet's ResNet and Swin: ``-1`` nothing (default); ``0`` the stem (``patch_embed1``: convs, BNs,
            projection); ``k`` in 1-4 the stem and stages 1..k. Stage 1 includes the semantic-token
            initialisation (``q``, ``q_embed``, ``kv``, ``se``, ``proxy_ln``); stage i > 1 its downsampling
            (``patch_embed{i}``) and semantic embedding (``proxy_embed{i}``); each stage its blocks and output
            norms (``norm{i}``, ``norm_proxy{i}``).
        norm_eval (bool): Keep the stem's BN layers in eval mode while training.
        with_cp (bool): Gradient checkpointing per block (less memory, same outputs and gradients).
        test_tile_size (int, optional): In eval mode, for an input taller or wider than this, replace the features
            of the whole image by those of tiles of this size, as the official segmentation backbone does at test
            time (768; see :meth:`tiled_forward`). ``None`` (default): the whole image, as the official detection
            backbone. Training is unaffected.
        fused_attention (bool): Run every attention through ``scaled_dot_product_attention`` (default).
            ``False`` materialises every attention matrix, the initial semantic cross-attention included, like
            the official code; it exists for benchmarks and numerical audits.
        init_cfg (dict | list[dict], optional): Any form mmengine accepts. ``Pretrained`` entries load an official
            ImageNet, converted or whole-detector checkpoint through :func:`mmdualvit.checkpoint.load_pretrained`,
            which refuses partial loads; other entries (``Constant``, ``TruncNormal`` ...) apply after the
            official random init. Unknown types are errors.

    Inputs are float batches (B, in_channels, H, W) of at least 28x28 pixels in the weights' dtype (any float
    dtype but float64 under ``torch.autocast``); anything else is refused with a message saying what to pass.

    Examples:
        >>> import torch
        >>> from mmdualvit.models import DualViT
        >>> model = DualViT(arch='s').eval()
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 224, 224))]
        [(1, 64, 56, 56), (1, 128, 28, 28), (1, 320, 14, 14), (1, 448, 7, 7)]
    """
    arch_zoo = {
        **dict.fromkeys(['s', 'small'], dict(stem_hidden_dim=32, embed_dims=[64, 128, 320, 448], depths=[3, 4, 6, 3],
                                             num_heads=[2, 4, 10, 14], mlp_ratios=[8, 8, 4, 3])),
        **dict.fromkeys(['b', 'base'], dict(stem_hidden_dim=64, embed_dims=[64, 128, 320, 512], depths=[3, 4, 15, 3],
                                            num_heads=[2, 4, 10, 16], mlp_ratios=[8, 8, 4, 3])),
        **dict.fromkeys(['l', 'large'], dict(stem_hidden_dim=64, embed_dims=[96, 192, 384, 512], depths=[3, 6, 21, 3],
                                             num_heads=[3, 6, 12, 16], mlp_ratios=[8, 8, 4, 3])),
    }
    arch_scalar_keys = ('stem_hidden_dim', )
    num_dual_stages = 2  # stages 1-2 keep the pathways apart; stages 3-4 merge them
    min_input_size = 4 * SEMANTIC_POOL  # 28 px always gives the stride-4 map one pooling window
    min_input_reason = 'its semantic tokens pool the stride-4 map in 7x7 windows'

    def __init__(self,
                 arch: Union[str, dict] = 's',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 out_type: str = 'featmap',
                 drop_path_rate: float = 0.,
                 stem_norm_cfg: dict = dict(type='BN', requires_grad=False),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 fused_attention: bool = True,
                 test_tile_size: Optional[int] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(arch, in_channels, out_indices, frozen_stages, drop_path_rate, with_cp, norm_eval, init_cfg)
        if out_type not in ('featmap', 'raw'):
            raise ValueError(f"DualViT: out_type must be 'featmap' or 'raw', got {out_type!r}.")
        if test_tile_size is not None and (out_type != 'featmap' or not isinstance(test_tile_size, int)
                                           or test_tile_size % 32 or test_tile_size < self.min_input_size):
            raise ValueError(f"DualViT: test_tile_size must be None or a multiple of 32 (768 is the official "
                             f"value), with out_type='featmap'; got {test_tile_size!r} (out_type={out_type!r}).")
        self.out_type = out_type
        self.test_tile_size = test_tile_size
        self.fused_attention = fused_attention
        settings = self.arch_settings
        dims, c1 = self.embed_dims, self.embed_dims[0]
        last = self.num_stages - 1

        # Semantic-token initialisation (official names): a learned 8x8 query cross-attends to the 7x7-pooled
        # stride-4 tokens, and an SE gate mixes the result with the pooled tokens.
        self.q = nn.Parameter(torch.zeros(QUERY_GRID * QUERY_GRID, c1))
        self.q_embed = nn.Sequential(nn.LayerNorm(c1), nn.Linear(c1, c1))
        self.kv = nn.Linear(c1, 2 * c1)
        self.se = nn.Sequential(nn.Linear(c1, c1), nn.ReLU(inplace=True), nn.Linear(c1, 2 * c1))
        self.proxy_ln = nn.LayerNorm(c1)

        dpr = torch.linspace(0, self.drop_path_rate, sum(self.depths)).tolist()
        for i, (dim, depth, heads, ratio) in enumerate(zip(dims, self.depths, settings['num_heads'],
                                                           settings['mlp_ratios'])):
            rates, dpr = dpr[:depth], dpr[depth:]
            if i == 0:
                embed = DualViTStem(in_channels, settings['stem_hidden_dim'], dim, stem_norm_cfg)
            else:
                embed = DualViTDownsample(dims[i - 1], dim)
                self.add_module(f'proxy_embed{i + 1}', SemanticEmbed(dims[i - 1], dim))
            if i < self.num_dual_stages:
                blocks = [DualBlock(dim, heads, ratio, rates[j], fused_attention) for j in range(depth)]
            else:
                # stage 3 alternates MLP ratios r, r-1, r, ... (official recipe)
                blocks = [
                    MergeBlock(dim, heads, ratio - 1 if (i == 2 and j % 2 == 1) else ratio, rates[j],
                               drop_semantics=(out_type == 'featmap' and i == last and j == depth - 1),
                               fused=fused_attention) for j in range(depth)
                ]
            self.add_module(f'patch_embed{i + 1}', embed)
            self.add_module(f'block{i + 1}', nn.ModuleList(blocks))
            # The classifier path normalises the last stage in its head (official key ``norm4``).
            if not (out_type == 'raw' and i == last):
                self.add_module(f'norm{i + 1}', _block_norm(dim))
            if i < last:
                self.add_module(f'norm_proxy{i + 1}', _block_norm(dim))
        # Channels-last conv weights make every conv read and write channels-last maps, which are the token
        # sequences' own memory layout: tokens <-> maps are then views, not copies (the depthwise convs of the FFNs,
        # the stem's and the downsamplings' outputs, the stage outputs read by the next stage), and oneDNN runs the
        # convs without reordering. Only strides change: names, values and checkpoints stay as they are, and
        # loading (an in-place copy) keeps the layout.
        self.to(memory_format=torch.channels_last)
        self._freeze_stages()

    def _check_arch(self, settings: dict) -> None:
        super()._check_arch(settings)
        if len(settings['depths']) != 4:
            raise ValueError(f"DualViT: arch lists need 4 entries each (2 dual and 2 merged stages), got "
                             f"{len(settings['depths'])}.")
        for i, (dim, heads) in enumerate(zip(settings['embed_dims'], settings['num_heads'])):
            if dim % heads:
                raise ValueError(f"DualViT: arch['num_heads'][{i}] = {heads} does not divide arch['embed_dims'][{i}] "
                                 f'= {dim}; use a head count that divides the width (the official archs use 32 '
                                 f'channels per head).')
        ratio, dim = settings['mlp_ratios'][2], settings['embed_dims'][2]
        if settings['depths'][2] > 1 and int(dim * (ratio - 1)) < 1:
            raise ValueError(f"DualViT: arch['mlp_ratios'][2] = {ratio!r} gives stage 3's odd blocks (ratio r - 1) a "
                             f'hidden width of 0; use a ratio above 1 + 1/{dim} (the official archs use 4).')

    # ------------------------------------------------------------------ init and checkpoints
    def _official_init(self):
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        trunc_normal_(self.q, std=.02)

    @classmethod
    def convert_checkpoint(cls, state_dict):
        """Official Dual-ViT names are ours; only the semantic query may need resampling. Idempotent.

        A query trained on another square grid (e.g. 12x12 at 384 px) is resampled to the stored 8x8 grid; at run
        time the 8x8 grid is resampled to the input's pooled grid, so 224 and 384 checkpoints both load. An 8x8
        query is returned as it is, so a second pass (e.g. ``load_state_dict`` after the strict loader) resizes
        nothing.
        """
        state_dict = OrderedDict(state_dict)
        if 'q' in state_dict:
            state_dict['q'] = resize_semantic_query(state_dict['q'])
        return state_dict

    @classmethod
    def is_own_checkpoint(cls, state_dict) -> bool:
        """Whether converted ``state_dict`` has Dual-ViT's stem and first stage (for the converter tool)."""
        return (any(k.startswith('patch_embed1.') for k in state_dict)
                and any(k.startswith('block1.') for k in state_dict))

    def checkpoint_unused_prefixes(self):
        """The ImageNet head, and what this instance's output type does not compute."""
        unused = ['post_network.', 'head.', 'aux_head.']
        if self.out_type == 'featmap':  # the dense last block drops the semantic tokens and their FFN
            unused.append(f'block{self.num_stages}.{self.depths[-1] - 1}.mlp.fc_proxy.')
        else:  # the classifier head owns the final norm
            unused.append(f'norm{self.num_stages}.')
        return tuple(unused)

    # ------------------------------------------------------------------ freezing
    def _stem_modules(self) -> List[nn.Module]:
        return [self.patch_embed1]

    def _stage_modules(self, i: int) -> list:
        names = [f'block{i + 1}', f'norm{i + 1}', f'norm_proxy{i + 1}']
        if i == 0:
            names += ['q', 'q_embed', 'kv', 'se', 'proxy_ln']
        else:
            names += [f'patch_embed{i + 1}', f'proxy_embed{i + 1}']
        return [getattr(self, n, None) for n in names]  # the last stage has no norm_proxy (nor norm4 when raw)

    # ------------------------------------------------------------------ forward
    def _initial_semantics(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """Semantic tokens from the stride-4 tokens: (B, M, C1).

        The stem's two stride-2 convs (padding k//2) round up, so the stride-4 map is ceil(H/4) x ceil(W/4); the
        7x7 average pool (no padding) rounds down. Hence M = floor(ceil(H/4)/7) * floor(ceil(W/4)/7): 4 for a 55-px
        square input, 16 for 111 px, 64 for 224 px (not floor(H/28) * floor(W/28), which is 1 and 9 there).
        """
        pooled = F.avg_pool2d(_tokens_to_map(x, hw), SEMANTIC_POOL, SEMANTIC_POOL)
        grid = tuple(pooled.shape[2:])
        pooled = pooled.flatten(2).transpose(1, 2)
        query = self.q
        if grid != (QUERY_GRID, QUERY_GRID):
            query = self.q.reshape(QUERY_GRID, QUERY_GRID, -1).permute(2, 0, 1)[None]
            query = _resize_grid(query, grid)[0].flatten(1).t()
        k, v = self.kv(pooled).chunk(2, dim=-1)
        query = self.q_embed(query).expand(x.shape[0], -1, -1)
        attended = attention(query, k, v, self.fused_attention)  # single head, scale C1^-0.5
        candidates = torch.stack([attended, pooled], dim=2)  # (B, M, 2, C)
        gate = self.se(candidates.sum(2).mean(1)).view(-1, 1, 2, candidates.shape[-1]).softmax(dim=2)
        return self.proxy_ln((candidates * gate).sum(2))

    def _dual_stage(self, i: int, x: torch.Tensor, semantics: torch.Tensor, hw: Tuple[int, int]):
        """Stages 1-2: the blocks update the pixel and the semantic tokens side by side."""
        for block in getattr(self, f'block{i + 1}'):
            x, semantics = checkpointed(block, self.with_cp, x, semantics, hw)
        return x, semantics

    def _merged_stage(self, i: int, x: torch.Tensor, semantics: torch.Tensor, hw: Tuple[int, int]):
        """Stages 3-4: the blocks run over ``[pixels; semantics]``, split again at the end (the dense model's last
        block drops the semantic tokens, which then come back empty)."""
        x = torch.cat([x, semantics], dim=1)
        for block in getattr(self, f'block{i + 1}'):
            x = checkpointed(block, self.with_cp, x, hw)
        num_pixels = hw[0] * hw[1]
        return x[:, :num_pixels], x[:, num_pixels:]

    def forward(self, x: torch.Tensor) -> tuple:
        """Return the outputs of ``out_indices``: NCHW maps (strides 4, 8, 16, 32), except that with
        ``out_type='raw'`` the last stage gives its unnormalised ``(pixel tokens, semantic tokens)``."""
        self._check_input(x)
        tile = self.test_tile_size
        if tile is not None and not self.training and max(x.shape[-2:]) > tile:
            return self.tiled_forward(x, tile)
        return self._forward(x)

    def tiled_forward(self, x: torch.Tensor, tile: int) -> tuple:
        """The official segmentation backbone's test-time features for inputs larger than ``tile``: the maps of
        ``tile`` x ``tile`` crops, put together. Crops start every ``tile`` pixels, except the last of a row or
        column, which ends at the image's edge (so it overlaps its neighbour). Each crop's maps are written where the
        previous crops' maps end, the last one flush with the far edge, so that the overlap takes the last crop's
        values. The semantic tokens of each crop see only that crop: the outputs differ from the whole image's, as
        upstream. (Upstream first computes the whole image's maps and overwrites them; the crops cover every
        position, so only their sizes are used here: stage i's maps are ceil(side / 2**(i + 2)) per side, each
        stride-2 conv rounding up.)"""
        def starts(length):
            count = -(-length // tile)
            return [i * tile for i in range(count - 1)] + [max(0, length - tile)]

        height, width = x.shape[-2:]
        strides = [2 ** (i + 2) for i in range(self.num_stages) if i in self.out_indices]
        rows, cols = starts(height), starts(width)
        outs = None
        top = [0] * len(strides)
        for r, y in enumerate(rows):
            left = [0] * len(strides)
            for c, x0 in enumerate(cols):
                crops = self._forward(x[..., y:y + tile, x0:x0 + tile])
                if outs is None:
                    outs = [crop.new_zeros(*crop.shape[:2], -(-height // s), -(-width // s))
                            for crop, s in zip(crops, strides)]
                for j, (out, crop) in enumerate(zip(outs, crops)):
                    h, w = crop.shape[-2:]
                    y1 = out.shape[-2] - h if r == len(rows) - 1 else top[j]
                    x1 = out.shape[-1] - w if c == len(cols) - 1 else left[j]
                    out[..., y1:y1 + h, x1:x1 + w] = crop
                    left[j] += w
            top = [t + crop.shape[-2] for t, crop in zip(top, crops)]
        return tuple(outs)

    def dynamic_export_problem(self, shape: Tuple[int, int]) -> Optional[str]:
        if self.test_tile_size is not None:
            return (f'Dual-ViT with test_tile_size={self.test_tile_size} chooses whole image or tiles from the input '
                    f'size in Python, so a graph traced at {shape[0]}x{shape[1]} holds one choice only. Export '
                    f'without --dynamic (once per input size), or with --cfg-options model.backbone.test_tile_size='
                    f'None (the whole image at every size).')
        # The semantic grid is floor(ceil(side / 4) / 7) per side; at 8 x 8 the learned queries are used as they
        # are, so a graph traced there has no resize step for other grids.
        if [math.ceil(side / 4) // SEMANTIC_POOL for side in shape] == [QUERY_GRID, QUERY_GRID]:
            return (f'Dual-ViT traced at {shape[0]}x{shape[1]} has a {QUERY_GRID}x{QUERY_GRID} semantic grid, at '
                    f'which it uses its queries without resizing them, so a dynamic graph traced there is wrong at '
                    f'other sizes. Export with --dynamic at another size (e.g. --shape 256 256), or without '
                    f'--dynamic.')
        return None

    def _forward(self, x: torch.Tensor) -> tuple:
        outs = []
        semantics = None
        for i in range(self.num_stages):
            x, hw = getattr(self, f'patch_embed{i + 1}')(x)
            if i == 0:
                semantics = self._initial_semantics(x, hw)
            else:
                semantics = getattr(self, f'proxy_embed{i + 1}')(semantics)
            run_blocks = self._dual_stage if i < self.num_dual_stages else self._merged_stage
            x, semantics = run_blocks(i, x, semantics, hw)
            if self.out_type == 'raw' and i == self.num_stages - 1:
                out = (x, semantics)  # for DualViTClsHead, which owns the final norm
            else:
                # A channels-last view, which the next stage's convs read as it is; the outputs are NCHW-contiguous.
                x = _tokens_to_map(getattr(self, f'norm{i + 1}')(x), hw)
                out = x.contiguous() if i in self.out_indices else None
                if i < self.num_stages - 1:
                    semantics = getattr(self, f'norm_proxy{i + 1}')(semantics)
            if i in self.out_indices:
                outs.append(out)
        return tuple(outs)


def resize_semantic_query(query: torch.Tensor) -> torch.Tensor:
    """Resample a learned semantic query of any square grid (n*n, C) to the 8x8 grid (64, C) of the model.

    Queries of other shapes are returned unchanged (the shape check then reports them).
    """
    side = math.isqrt(query.shape[0]) if query.dim() == 2 else 0
    if query.dim() != 2 or side * side != query.shape[0] or side == QUERY_GRID:
        return query
    grid = query.reshape(side, side, -1).permute(2, 0, 1)[None].float()
    return _resize_grid(grid, (QUERY_GRID, QUERY_GRID))[0].flatten(1).t().to(query.dtype).contiguous()


def _resize_grid(grid: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a (1, C, h, w) grid, as the official code resizes the semantic query."""
    return F.interpolate(grid, size=size, mode='bicubic', align_corners=False)
