"""Layer helpers shared by the models: gradient checkpointing, multi-head attention, checkpoint conversion, compile."""
from collections import OrderedDict
from typing import Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.utils import digit_version


def checkpointed(module: nn.Module, with_cp: bool, *args):
    """Call ``module(*args)``, recomputing its activations in backward when ``with_cp`` and gradients are on."""
    if with_cp and torch.is_grad_enabled() and any(a.requires_grad for a in args if torch.is_tensor(a)):
        return cp.checkpoint(module, *args, use_reentrant=False)
    return module(*args)


# torch.is_autocast_enabled takes a device type from torch 2.4 on.
_AUTOCAST_TAKES_DEVICE = digit_version(torch.__version__) >= digit_version('2.4.0')


def autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` ('cpu', 'cuda', ...), on every supported torch.

    ``torch.is_autocast_enabled(device_type)`` exists from torch 2.4; before, the argument-less form answers for
    CUDA only (``TypeError`` when given one) and each other device has its own ``is_autocast_<device>_enabled``.
    """
    if _AUTOCAST_TAKES_DEVICE:
        # devices without autocast (e.g. 'meta', which FLOP counting uses) raise instead of answering False
        return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    if device_type == 'cuda':
        return torch.is_autocast_enabled()
    query = getattr(torch, f'is_autocast_{device_type}_enabled', None)
    return bool(query()) if query is not None else False


def compile_backbone(model: nn.Module, **compile_kwargs) -> nn.Module:
    """``torch.compile`` the backbone of ``model`` (a detector, segmentor or classifier, DDP-wrapped or not) in place.

    Only the backbone: it compiles as one graph, whereas a whole model's data samples, proposals and
    post-processing break graphs (mmengine's ``compile=True`` compiles ``train_step`` whole, and only when
    training). ``nn.Module.compile`` keeps the parameter names, so checkpoints save and load as without compile.
    Dynamo's LSTM support (``torch._dynamo.config.allow_rnn``, process-wide) is switched on, without which every
    LSTM of Sequencer2D is a graph break. ``compile_kwargs`` go to ``torch.compile``. Returns the backbone.
    """
    from mmengine.model import is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(f'compile_backbone: {type(model).__name__} has no backbone module to compile; compile the '
                         f'model itself with torch.compile (or mmengine\'s compile=True for its train_step).')
    torch._dynamo.config.allow_rnn = True
    backbone.compile(**compile_kwargs)
    return backbone


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C // heads)."""
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, D) -> (B, N, heads * D)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) v over the last two dims.

    ``fused=True`` uses ``scaled_dot_product_attention`` (memory linear in the token count);
    ``fused=False`` materialises the attention matrix as the official code does (kept for benchmarks and audits).
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v)
    attn = (q @ k.transpose(-2, -1)) * q.shape[-1]**-0.5
    return attn.softmax(dim=-1) @ v


class ConvertsCheckpoints:
    """Mixin for modules that accept checkpoints in foreign layouts (official, timm) as well as their own.

    A subclass overrides the class-level :meth:`convert_checkpoint`, which must be idempotent. It runs on every
    ``load_state_dict`` that reaches the module (mmengine's ``load_checkpoint``, a detector's ``load_from``, a
    classifier), and :func:`mmdualvit.checkpoint.load_pretrained` calls it before comparing keys, so the strict
    report sees the converted names. Put the mixin before ``BaseModule`` in the bases.
    """

    @classmethod
    def convert_checkpoint(cls, state_dict: Dict[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
        """Map a state_dict (already unwrapped, no ``module.`` prefix) to this class's names; idempotent."""
        return OrderedDict(state_dict)

    def checkpoint_unused_prefixes(self) -> Sequence[str]:
        """Prefixes of checkpoint keys this instance does not use on purpose (e.g. an ImageNet head)."""
        return ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        own = OrderedDict((k[len(prefix):], state_dict.pop(k)) for k in list(state_dict) if k.startswith(prefix))
        state_dict.update((prefix + k, v) for k, v in self.convert_checkpoint(own).items())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
