"""Helpers shared by the backbones: arch tables, freezing, checkpointed calls, attention."""
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
