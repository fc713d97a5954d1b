"""What both backbones share: the arch table and its checks, argument checks, init, freezing and input checks.

A subclass declares ``arch_zoo`` (and which arch keys are scalars or ratios), calls ``super().__init__`` before
building its layers and :meth:`BaseBackbone._freeze_stages` after, and implements ``_official_init``,
``_stem_modules`` and ``_stage_modules``. Everything here is argument handling; the architecture lives in the
subclass.
"""
import copy
import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint import init_weights_strictly, split_init_cfg
from ..utils import ConvertsCheckpoints, autocast_enabled

Frozen = Union[nn.Module, nn.Parameter]


class BaseBackbone(ConvertsCheckpoints, BaseModule):
    """Scaffold of a backbone with named architectures, stage outputs, freezing and strict checkpoint loading.

    Args:
        arch (str | dict): A name or alias from :attr:`arch_zoo` (case-insensitive), or a dict with exactly the
            keys of its entries. Every value is checked here: one positive int per stage (``depths``,
            ``embed_dims`` ...), one positive number per stage for the keys in :attr:`arch_ratio_keys`, one
            positive int for those in :attr:`arch_scalar_keys`, all per-stage lists of one length.
        in_channels (int): Input channels.
        out_indices (int | Sequence[int]): Stages to return (negative indices count from the last); not empty.
        frozen_stages (int): ``-1`` freezes nothing, ``0`` the stem, ``k`` the stem and stages ``1..k`` (the
            mmdet ResNet/Swin convention), in ``[-1, num_stages]``.
        drop_path_rate (float): Stochastic depth rate in [0, 1).
        with_cp (bool): Gradient checkpointing per block.
        norm_eval (bool): Keep the BatchNorm layers in eval mode while training.
        init_cfg (dict | list[dict], optional): Checked by :func:`mmdualvit.checkpoint.split_init_cfg`.
    """
    #: named architectures; aliases are further keys with the same settings
    arch_zoo: Dict[str, dict] = {}
    #: arch keys holding one positive int for the whole model (all other keys hold one value per stage)
    arch_scalar_keys: Tuple[str, ...] = ()
    #: per-stage arch keys that hold positive numbers (hidden-width ratios of ``embed_dims``), not ints
    arch_ratio_keys: Tuple[str, ...] = ('mlp_ratios', )
    #: the smallest input side the model accepts (0: any), and why, for the error message
    min_input_size: int = 0
    min_input_reason: str = ''

    def __init__(self,
                 arch: Union[str, dict],
                 in_channels: int,
                 out_indices: Union[int, Sequence[int]],
                 frozen_stages: int,
                 drop_path_rate: float,
                 with_cp: bool,
                 norm_eval: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        split_init_cfg(init_cfg, self._name)  # a misspelled type fails here, not after building a detector
        self.arch_settings = self._resolve_arch(arch)
        self.depths = list(self.arch_settings['depths'])
        self.embed_dims = list(self.arch_settings['embed_dims'])
        self.num_stages = len(self.depths)
        self.in_channels = _check_positive_int(in_channels, f'{self._name}: in_channels')
        self.drop_path_rate = _check_drop_path_rate(drop_path_rate, self._name)
        self.out_indices = _check_out_indices(out_indices, self.num_stages, self._name)
        self.out_channels = [self.embed_dims[i] for i in self.out_indices]
        self.frozen_stages = _check_frozen_stages(frozen_stages, self.num_stages, self._name)
        self.with_cp = with_cp
        self.norm_eval = norm_eval

    @property
    def _name(self) -> str:
        return type(self).__name__

    # ------------------------------------------------------------------ arch
    def _resolve_arch(self, arch) -> dict:
        """The settings of ``arch`` (a deep copy: editing them changes neither the zoo nor the caller's dict),
        checked by :meth:`_check_arch`."""
        essential = set(next(iter(self.arch_zoo.values())))
        if isinstance(arch, str):
            if arch.lower() not in self.arch_zoo:
                names = ', '.join(repr(k) for k in self.arch_zoo)
                raise ValueError(f'{self._name}: unknown arch {arch!r}; choose one of {names} or pass a dict with '
                                 f'the keys {sorted(essential)}.')
            settings = copy.deepcopy(self.arch_zoo[arch.lower()])
        elif isinstance(arch, dict):
            missing, unknown = essential - set(arch), set(arch) - essential
            if missing or unknown:
                raise ValueError(f'{self._name}: a custom arch dict needs exactly the keys {sorted(essential)}; '
                                 f'missing {sorted(missing)}, unknown {sorted(unknown)}.')
            settings = copy.deepcopy(arch)
        else:
            raise TypeError(f'{self._name}: arch must be a str or a dict, got {type(arch).__name__}.')
        self._check_arch(settings)
        return settings

    def _check_arch(self, settings: dict) -> None:
        """Raise ``ValueError`` naming the key, the entry and the fix for any value the model cannot be built with.

        Subclasses extend this with their own rules (call ``super()._check_arch`` first).
        """
        for key in self.arch_scalar_keys:
            _check_positive_int(settings[key], f"{self._name}: arch['{key}']")
        per_stage = [k for k in settings if k not in self.arch_scalar_keys]
        for key in per_stage:
            value = settings[key]
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"{self._name}: arch['{key}'] must be a non-empty list with one entry per stage, "
                                 f'got {value!r}.')
        lengths = {k: len(settings[k]) for k in per_stage}
        if len(set(lengths.values())) > 1:
            raise ValueError(f'{self._name}: the per-stage arch lists differ in length ({lengths}); give every one '
                             f'of them one entry per stage.')
        for key in per_stage:
            for i, value in enumerate(settings[key]):
                where = f"{self._name}: arch['{key}'][{i}]"
                if key in self.arch_ratio_keys:
                    _check_positive_real(value, where)
                    if int(settings['embed_dims'][i] * value) < 1:
                        raise ValueError(f"{where} = {value!r} gives stage {i + 1} (width "
                                         f"{settings['embed_dims'][i]}) a hidden width of 0; use a ratio of at "
                                         f"least 1/{settings['embed_dims'][i]} (the official models use 3-8).")
                else:
                    _check_positive_int(value, where)

    # ------------------------------------------------------------------ init and freezing
    def init_weights(self):
        """Official random init, then the init_cfg entries; ``Pretrained`` ones load strictly (see ``init_cfg``)."""
        init_weights_strictly(self, self._official_init, super().init_weights)

    def _official_init(self) -> None:
        """The official code's random initialisation."""
        raise NotImplementedError

    def _stem_modules(self) -> List[Frozen]:
        """What ``frozen_stages >= 0`` freezes: the stem."""
        raise NotImplementedError

    def _stage_modules(self, i: int) -> List[Frozen]:
        """What stage ``i`` (0-based) consists of, its downsampling and output norms included."""
        raise NotImplementedError

    def _freeze_stages(self) -> None:
        """Eval mode and no gradients for the stem (``frozen_stages >= 0``) and stages ``1..frozen_stages``."""
        parts = self._stem_modules() if self.frozen_stages >= 0 else []
        for i in range(self.frozen_stages):
            parts += self._stage_modules(i)
        for part in parts:
            if isinstance(part, nn.Parameter):
                part.requires_grad = False
            elif part is not None:
                part.eval()
                for param in part.parameters():
                    param.requires_grad = False

    def train(self, mode: bool = True):
        """Set the mode, keeping frozen stages (and, with ``norm_eval``, every BatchNorm) in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # ------------------------------------------------------------------ export
    def dynamic_export_problem(self, shape: Tuple[int, int]) -> Optional[str]:
        """Why an ONNX graph traced at ``shape`` (H, W) would be valid at that size only (a message naming the
        fix), or None. ``mmdualvit.deployment`` asks every module that has this method before a dynamic export."""
        return None

    # ------------------------------------------------------------------ input
    def _check_input(self, x: torch.Tensor) -> None:
        """Refuse inputs the model would fail on deep inside (or silently mis-handle), saying what to pass."""
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f'{self._name} expects an image batch of shape (B, {self.in_channels}, H, W), got '
                             f'{got}.')
        if not x.is_floating_point():
            raise TypeError(f'{self._name} expects a floating-point image batch, got {x.dtype}. Convert and '
                            f'normalise it first (x.float(), then subtract the mean and divide by the std, as the '
                            f"data preprocessor of mmdet/mmseg/mmpretrain configs does).")
        weight_dtype = next(self.parameters()).dtype
        if autocast_enabled(x.device.type):
            if x.dtype == torch.float64:
                raise TypeError(f'{self._name}: a float64 input cannot run under autocast; pass x.float().')
        elif x.dtype != weight_dtype:
            raise TypeError(f'{self._name}: the input is {x.dtype} but the weights are {weight_dtype}; cast the '
                            f'input (x.to({weight_dtype})), cast the model (model.to({x.dtype})), or run under '
                            f'torch.autocast.')
        if self.min_input_size and min(x.shape[-2:]) < self.min_input_size:
            size = self.min_input_size
            raise ValueError(f'{self._name} needs inputs of at least {size}x{size} pixels ({self.min_input_reason}); '
                             f'got {tuple(x.shape[-2:])}. Resize or pad the input.')


# ---------------------------------------------------------------------------------------------- argument checks
def _check_positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f'{where} must be a positive int, got {value!r}.')
    return int(value)


def _check_positive_real(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f'{where} must be a positive finite number, got {value!r}.')
    return float(value)


def _check_drop_path_rate(rate, name: str) -> float:
    """``rate`` if it is a valid stochastic-depth rate in [0, 1).

    1 drops every residual branch (the scale 1/(1-p) is then a division by zero, NaN in training), more than 1 or
    negative rates are not probabilities, and NaN would silently turn stochastic depth off.
    """
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:  # NaN fails both
        raise ValueError(f'{name}: drop_path_rate must be in [0, 1), got {rate!r}; use 0 to turn stochastic '
                         f'depth off (the official recipes use 0.1-0.3).')
    return float(rate)


def _check_out_indices(out_indices, num_stages: int, name: str) -> Tuple[int, ...]:
    """``out_indices`` (an int or a sequence; negative indices allowed) as a sorted tuple of stage indices."""
    if isinstance(out_indices, numbers.Integral) and not isinstance(out_indices, bool):
        out_indices = (out_indices, )
    hint = f'pass stage indices in [-{num_stages}, {num_stages - 1}], e.g. {tuple(range(num_stages))}'
    if not isinstance(out_indices, (list, tuple)) or not out_indices:
        raise ValueError(f'{name}: out_indices must name at least one stage, got {out_indices!r}; {hint}.')
    result = []
    for index in out_indices:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not -num_stages <= index < num_stages:
            raise ValueError(f'{name}: out_indices entry {index!r} is not a stage of this {num_stages}-stage '
                             f'model; {hint}.')
        result.append(int(index) % num_stages)
    if len(set(result)) != len(result):
        raise ValueError(f'{name}: out_indices {tuple(out_indices)} repeats a stage; name each stage once.')
    return tuple(sorted(result))


def _check_frozen_stages(frozen_stages, num_stages: int, name: str) -> int:
    if (isinstance(frozen_stages, bool) or not isinstance(frozen_stages, numbers.Integral)
            or not -1 <= frozen_stages <= num_stages):
        raise ValueError(f'{name}: frozen_stages must be an int in [-1, {num_stages}] (-1 freezes nothing, 0 the '
                         f'stem, k the stem and stages 1..k), got {frozen_stages!r}.')
    return int(frozen_stages)
