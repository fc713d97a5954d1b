"""Bilinear resampling with half-pixel centres, antialiased when shrinking, in a form ONNX exporters express exactly.

PyTorch's antialiased bilinear kernel (``F.interpolate(..., antialias=True)``) has no ONNX export in the TorchScript
exporter, and the dynamo exporter maps it to ONNX ``Resize(antialias=1)``, whose onnxruntime results differ from
PyTorch's. Shrinking is therefore written here as two matrix products whose weights are PyTorch's antialiased
triangle filter, so eager PyTorch and every exported graph compute the same thing.
"""
from typing import Tuple

import torch
import torch.nn.functional as F


def antialias_matrix(size_in: int, size_out: int, scale: float, device=None) -> torch.Tensor:
    """(size_out, size_in) float64 weights of antialiased bilinear shrinking by ``scale`` < 1, half-pixel centres.

    Output cell k is centred on input coordinate (k + 0.5) / scale; input cell j gets the triangle filter of
    half-width 1 / scale, ``max(0, 1 - |j + 0.5 - (k + 0.5) / scale| * scale)``, and each row is normalised to sum
    to 1 over the cells inside the input. That is PyTorch's ``antialias=True`` bilinear kernel: its window bounds
    cut only cells whose weight is 0.
    """
    centres = (torch.arange(size_out, dtype=torch.float64, device=device) + 0.5) / scale
    cells = torch.arange(size_in, dtype=torch.float64, device=device) + 0.5
    weights = (1 - (cells[None, :] - centres[:, None]).abs() * scale).clamp(min=0)
    return weights / weights.sum(dim=1, keepdim=True)


def resample_bilinear(x: torch.Tensor, scale: float, size: Tuple[int, int]) -> torch.Tensor:
    """Resample NCHW ``x`` bilinearly by ``scale`` (half-pixel centres), antialiased when ``scale`` < 1, and keep the
    first ``size`` = (height, width) cells.

    Equals ``F.interpolate(x, scale_factor=scale, mode='bilinear', align_corners=False,
    recompute_scale_factor=False, antialias=scale < 1)[..., :size[0], :size[1]]`` up to float rounding. Enlarging
    is that call; shrinking is ``A_h @ x @ A_wᵀ`` with :func:`antialias_matrix`, which every ONNX exporter writes as
    two MatMuls. Computed in float32 whatever the input dtype (PyTorch has no reduced-precision CPU kernel for
    antialiased resampling), returned in the input dtype.
    """
    level = x.float()
    if scale >= 1:
        out = F.interpolate(level, scale_factor=scale, mode='bilinear', align_corners=False,
                            recompute_scale_factor=False)[..., :size[0], :size[1]]
    else:
        rows = antialias_matrix(x.shape[-2], size[0], scale, x.device).float()
        cols = antialias_matrix(x.shape[-1], size[1], scale, x.device).float()
        with torch.autocast(x.device.type, enabled=False):  # autocast would run the products in reduced precision
            out = rows @ level @ cols.T
    return out.to(x.dtype)
