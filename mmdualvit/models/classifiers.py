"""ImageNet classifiers for validating official checkpoints with mmpretrain (``configs/imagenet_*.py``).

Import this module (the configs' ``custom_imports`` do) to register ``mmdualvit.ImageNetClassifier``,
``mmdualvit.DualViTClsHead`` and ``mmdualvit.Sequencer2DClsHead``. It imports mmpretrain, which plain
``import mmdualvit`` does not.

The classifier accepts official checkpoints as they are, through the same mechanism as the backbones
(:class:`~mmdualvit.models.utils.ConvertsCheckpoints`): it routes official head keys to ``head.*`` and the rest to
``backbone.*``, and the backbone's own converter handles timm names and the semantic query. So
``tools/test.py configs/imagenet_dualvit_s.py dualvit_s.pth`` works.
"""
from collections import OrderedDict
from typing import Tuple

import torch
import torch.nn as nn
from mmpretrain.models import ClsHead, ImageClassifier

from ..registry import MODELS
from .backbones.dual_vit import BLOCK_NORM_EPS, GlobalAttention
from .utils import ConvertsCheckpoints

CLASSIFIER_EPS = BLOCK_NORM_EPS  # the official heads use the block LayerNorm (eps 1e-6) too


class ClassBlock(nn.Module):
    """Updates the class token only: c += attn(norm1(all tokens)); c += FFN(norm2(c))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=CLASSIFIER_EPS)
        self.attn = GlobalAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=CLASSIFIER_EPS)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        cls = x[:, :1] + self.attn(normed, queries=normed[:, :1])
        cls = cls + self.mlp(self.norm2(cls))
        return torch.cat([cls, x[:, 1:]], dim=1)


@MODELS.register_module()
class DualViTClsHead(ClsHead):
    """The official Dual-ViT ImageNet head on ``DualViT(out_type='raw')`` tokens (eval logits of token labeling).

    cls = mean of all stage-4 tokens (pixel and semantic); one class-attention block updates it; after the final
    LayerNorm, logits = fc(cls) + 0.5 * max over pixel tokens of aux_fc(tokens). Training with token labeling is not
    implemented: the loss is applied to these eval logits.

    Args:
        num_classes (int): Classes.
        in_channels (int): Stage-4 channels.
        num_heads (int): Heads of the class-attention block (the stage-4 heads).
        mlp_ratio (float): FFN ratio of the class-attention block. Defaults to 2 (official).
    """
    # official whole-model key prefix -> this head's names
    official_prefixes = {'post_network.': 'post_network.', 'norm4.': 'norm.', 'head.': 'fc.', 'aux_head.': 'aux_fc.'}
    shared_prefixes = ()  # official keys that the backbone needs as well

    def __init__(self, num_classes: int, in_channels: int, num_heads: int, mlp_ratio: float = 2., **kwargs):
        super().__init__(**kwargs)
        self.post_network = nn.ModuleList([ClassBlock(in_channels, num_heads, mlp_ratio)])
        self.norm = nn.LayerNorm(in_channels, eps=CLASSIFIER_EPS)
        self.fc = nn.Linear(in_channels, num_classes)
        self.aux_fc = nn.Linear(in_channels, num_classes)

    def forward(self, feats: Tuple) -> torch.Tensor:
        pixels, semantics = feats[-1]
        tokens = torch.cat([pixels, semantics], dim=1)
        x = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        for block in self.post_network:
            x = block(x)
        x = self.norm(x)
        return self.fc(x[:, 0]) + 0.5 * self.aux_fc(x[:, 1:1 + pixels.shape[1]]).max(dim=1).values


@MODELS.register_module()
class Sequencer2DClsHead(ClsHead):
    """The official Sequencer2D ImageNet head: LayerNorm per token, global average pool, linear.

    Takes the last ``Sequencer2D(pyramid='native')`` output (unnormalised NCHW).
    """
    official_prefixes = {'norm.': 'norm.', 'head.': 'fc.'}
    shared_prefixes = ('norm.', )  # the backbone keeps its (here unused) final norm as well

    def __init__(self, num_classes: int, in_channels: int, **kwargs):
        super().__init__(**kwargs)
        self.norm = nn.LayerNorm(in_channels, eps=CLASSIFIER_EPS)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, feats: Tuple) -> torch.Tensor:
        return self.fc(self.norm(feats[-1].permute(0, 2, 3, 1)).mean(dim=(1, 2)))


@MODELS.register_module()
class ImageNetClassifier(ConvertsCheckpoints, ImageClassifier):
    """mmpretrain ``ImageClassifier`` that also loads official Dual-ViT / Sequencer2D ImageNet checkpoints as-is."""

    def convert_checkpoint(self, state_dict):
        """Official (or timm) whole-model names -> ``backbone.*`` / ``head.*``; idempotent.

        The backbone class converts the official names first (timm's ``head.fc`` becomes ``head`` there); the
        head's ``official_prefixes`` then say which keys are its own.
        """
        if any(k.startswith('backbone.') for k in state_dict):  # already ours (timm's head.fc.* is not)
            return OrderedDict(state_dict)
        state = type(self.backbone).convert_checkpoint(state_dict)
        routes = self.head.official_prefixes
        out = OrderedDict()
        for key, value in state.items():
            prefix = next((p for p in routes if key.startswith(p)), None)
            if prefix is None or prefix in self.head.shared_prefixes:
                out['backbone.' + key] = value
            if prefix is not None:
                out['head.' + routes[prefix] + key[len(prefix):]] = value
        return out
