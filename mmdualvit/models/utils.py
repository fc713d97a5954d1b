"""Helpers shared by the backbones: arch tables, argument checks, checkpoint conversion, freezing, attention."""
import numbers
from collections import OrderedDict
from typing import Dict, Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp


def resolve_arch(arch: Union[str, dict], arch_zoo: Dict[str, dict], essential_keys: Iterable[str],
                 model_name: str) -> dict:
    """Return the settings of ``arch``: a name or alias from ``arch_zoo``, or a dict with exactly the essential keys.

    Raises:
        ValueError: for an unknown name, or a dict with missing or unknown keys.
    """
    essential_keys = set(essential_keys)
    if isinstance(arch, str):
        key = arch.lower()
        if key not in arch_zoo:
            names = ', '.join(repr(k) for k in arch_zoo)
            raise ValueError(f'{model_name}: unknown arch {arch!r}; choose one of {names} or pass a dict with '
                             f'keys {sorted(essential_keys)}.')
        return dict(arch_zoo[key])
    if not isinstance(arch, dict):
        raise TypeError(f'{model_name}: arch must be a str or a dict, got {type(arch).__name__}.')
    missing = essential_keys - set(arch)
    unknown = set(arch) - essential_keys
    if missing or unknown:
        raise ValueError(f'{model_name}: a custom arch dict needs exactly the keys {sorted(essential_keys)}; '
                         f'missing {sorted(missing)}, unknown {sorted(unknown)}.')
    return dict(arch)


def check_out_indices(out_indices: Sequence[int], num_stages: int, model_name: str) -> tuple:
    """Normalise ``out_indices`` (negative indices allowed) to a sorted tuple of stage indices."""
    if isinstance(out_indices, int):
        out_indices = (out_indices, )
    result = []
    for index in out_indices:
        if not -num_stages <= index < num_stages:
            raise ValueError(f'{model_name}: out_indices entry {index} is out of range for {num_stages} stages.')
        result.append(index % num_stages)
    if len(set(result)) != len(result):
        raise ValueError(f'{model_name}: out_indices {tuple(out_indices)} repeats a stage.')
    return tuple(sorted(result))


def freeze(modules: Iterable[Optional[nn.Module]], params: Iterable[nn.Parameter] = ()) -> None:
    """Put ``modules`` in eval mode and stop gradients to their parameters and to ``params``."""
    for module in modules:
        if module is None:
            continue
        module.eval()
        for param in module.parameters():
            param.requires_grad = False
    for param in params:
        param.requires_grad = False


def checkpointed(module: nn.Module, with_cp: bool, *args):
    """Call ``module(*args)``, recomputing its activations in backward when ``with_cp`` and gradients are on."""
    if with_cp and torch.is_grad_enabled() and any(a.requires_grad for a in args if torch.is_tensor(a)):
        return cp.checkpoint(module, *args, use_reentrant=False)
    return module(*args)


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


def check_drop_path_rate(rate: float, model_name: str) -> float:
    """Return ``rate`` if it is a valid stochastic-depth rate in [0, 1).

    1 drops every residual branch (the scale 1/(1-p) is then a division by zero, NaN in training), more than 1 or
    negative rates are not probabilities, and NaN would silently turn stochastic depth off.
    """
    if not isinstance(rate, numbers.Real) or not 0 <= rate < 1:  # NaN fails both comparisons
        raise ValueError(f'{model_name}: drop_path_rate must be in [0, 1), got {rate!r}; use 0 to turn stochastic '
                         f'depth off (the official recipes use 0.1-0.3).')
    return float(rate)


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

    def checkpoint_new_prefixes(self) -> Sequence[str]:
        """Prefixes of this instance's tensors that no ImageNet checkpoint holds (they keep their init)."""
        return ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        own = OrderedDict((k[len(prefix):], state_dict.pop(k)) for k in list(state_dict) if k.startswith(prefix))
        state_dict.update((prefix + k, v) for k, v in self.convert_checkpoint(own).items())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
