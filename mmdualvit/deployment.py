"""ONNX export of backbones, detectors, segmentors and classifiers, verified with onnxruntime before it is kept.

What is exported (the graph's input is the preprocessed, padded NCHW float tensor the data preprocessor makes):

- ``backbone_only=True``, or a model that is a backbone: the backbone's feature maps (``feats.0``, ``feats.1`` ...).
- an mmdet single-stage detector (RetinaNet, ATSS, GFL, FCOS ...): backbone, neck and dense head up to the head
  outputs, named after the head's ``predict_by_feat`` arguments (``cls_scores.0`` ... ``bbox_preds.4``,
  ``score_factors.0`` ...), so :func:`group_outputs` gives them back in the order ``predict_by_feat`` takes them.
- an mmdet detector with a RoI stage (Mask R-CNN, Cascade, Sparse R-CNN): backbone and neck (``feats.*``). Their
  proposal and RoI steps do not trace into standard ONNX: mmcv 2.1's NMS has no ONNX symbolic, mmdet 3.3's
  export-time box decoding still imports mmdet 2.x's removed ``mmdet.core.export``, and the number of boxes per
  step is chosen in Python (top-k per level, NMS, per-image loops), which a trace freezes.
- an mmseg encoder-decoder: the decode head's logits at its own stride (``seg_logits``).
- an mmpretrain classifier: the head's logits (``logits``).

The TorchScript exporter (``dynamo=False``) is used at opset 18 (17 on a torch whose exporter cannot write opset
18, see :func:`export_opset`). The dynamo exporter needs the extra package
``onnxscript``, and issue 23 found it failing on Dual-ViT and writing wrong Sequencer2D graphs (see
:mod:`mmdualvit.models.backbones.resample`). Adaptive average
pooling (UperNet's pyramid pooling) is exported as two matrix products (:class:`MatMulAdaptiveAvgPool2d`). The
graph is traced in memory and run with onnxruntime on the export input (and a second size if dynamic) and compared
with PyTorch; :func:`export_onnx` writes the file only if no output differs by more than :data:`TOLERANCE`, and
raises :class:`ExportError` otherwise.
"""
import contextlib
import functools
import inspect
import io
import logging
import math
import os
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import MMLogger

OPSET = 18
# torch.onnx.export has a `dynamo` switch from torch 2.5 on (later its default became True); before, it only had the
# TorchScript exporter, which is the one we use.
_TORCHSCRIPT_EXPORTER = dict(dynamo=False) if 'dynamo' in inspect.signature(torch.onnx.export).parameters else {}


class _Mean(nn.Module):

    def forward(self, x):
        return x.mean(dim=-1)


@functools.lru_cache(maxsize=None)
def export_opset() -> int:
    """:data:`OPSET`, or 17 where torch's exporter writes opset-18 graphs that ONNX's checker refuses.

    Older TorchScript exporters (torch 2.1 here) emit reductions at opset 18 in their opset-13 form, with ``axes`` as
    an attribute ("Unrecognized attribute: axes for operator ReduceMean", pytorch/pytorch#104190); every backbone
    averages somewhere. One tiny export, once per process, tells which case this torch is.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(_Mean(), (torch.zeros(1, 2), ), io.BytesIO(), opset_version=OPSET,
                              **_TORCHSCRIPT_EXPORTER)
    except Exception:  # torch.onnx.errors.CheckerError, whose module path differs between torch releases
        return 17
    return OPSET


# Largest measured max|onnxruntime - PyTorch| / max|PyTorch| (see compare_outputs), over every output of every model,
# variant and input size tests/test_export.py exports, was 1.2e-5 (ATSS's centerness on a 1 x 2 level; 7e-6 for the
# full-depth backbones with the official weights; docs/deployment.md). The check allows about 8x that; the errors it
# exists for are 1e-3 (a bias shifted by 0.01) to 1e-1 (a wrong resampling, a size frozen into the trace).
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The model cannot be exported as asked, or the exported file does not compute what PyTorch computes."""


# ----------------------------------------------------------------------------------------------- what to export
class ExportWrapper(nn.Module):
    """The exported computation of ``model`` as a module returning a flat tuple of tensors.

    Args:
        model: A backbone, or an mmdet / mmseg / mmpretrain model (built from a config).
        backbone_only: Export only ``model.backbone``.

    Attributes:
        kind (str): ``'backbone'``, ``'dense_detector'``, ``'two_stage_features'``, ``'segmentor'`` or
            ``'classifier'``.
        output_names (list[str]): Names of the flat outputs, ``group.index`` for lists (see :func:`group_outputs`).
    """

    def __init__(self, model: nn.Module, backbone_only: bool = False):
        super().__init__()
        self.model = model
        has_backbone = isinstance(getattr(model, 'backbone', None), nn.Module)
        if backbone_only and not has_backbone:
            raise ExportError(f'{type(model).__name__} has no `backbone` to export on its own; drop --backbone-only.')
        if backbone_only or not has_backbone:
            self.kind = 'backbone'
        elif hasattr(model, 'roi_head'):
            self.kind = 'two_stage_features'
        elif hasattr(model, 'bbox_head'):
            self.kind = 'dense_detector'
        elif hasattr(model, 'decode_head'):
            self.kind = 'segmentor'
        elif hasattr(model, 'head'):
            self.kind = 'classifier'
        else:
            raise ExportError(f'do not know what to export of a {type(model).__name__}; use --backbone-only.')
        self.output_names: List[str] = []

    @property
    def backbone(self) -> nn.Module:
        return self.model if not hasattr(self.model, 'backbone') else self.model.backbone

    def _raw(self, x: torch.Tensor):
        if self.kind == 'backbone':
            return ('feats', self.backbone(x)),
        if self.kind == 'two_stage_features':
            return ('feats', self.model.extract_feat(x)),
        if self.kind == 'dense_detector':
            outs = self.model.bbox_head(self.model.extract_feat(x))
            names = list(inspect.signature(self.model.bbox_head.predict_by_feat).parameters)[:len(outs)]
            return tuple(zip(names, outs))
        if self.kind == 'segmentor':
            return ('seg_logits', self.model.decode_head(self.model.extract_feat(x))),
        return ('logits', self.model.head(self.model.extract_feat(x))),

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        flat, names = [], []
        for name, value in self._raw(x):
            if torch.is_tensor(value):
                flat.append(value)
                names.append(name)
            else:
                flat.extend(value)
                names.extend(f'{name}.{i}' for i in range(len(value)))
        self.output_names = names
        return tuple(flat)


def group_outputs(names: Sequence[str], arrays: Sequence) -> 'OrderedDict[str, object]':
    """``{'cls_scores': [level0, level1, ...], 'seg_logits': array}`` from flat outputs named ``group.index``."""
    groups = OrderedDict()
    for name, array in zip(names, arrays):
        group, _, index = name.rpartition('.')
        if group and index.isdigit():
            groups.setdefault(group, []).append(array)
        else:
            groups[name] = array
    return groups


# ----------------------------------------------------------------------------------------------- export
def adaptive_pool_matrix(size_in, size_out: int) -> torch.Tensor:
    """(size_out, size_in) float32 weights of adaptive average pooling: row i averages the input cells
    ``floor(i * size_in / size_out)`` to ``ceil((i + 1) * size_in / size_out) - 1``, as ``nn.AdaptiveAvgPool2d``.

    Written with tensor arithmetic, so that in a traced graph ``size_in`` may be the input's dynamic size.
    """
    out = torch.arange(size_out)
    start = torch.div(out * size_in, size_out, rounding_mode='floor')
    end = torch.div((out + 1) * size_in + size_out - 1, size_out, rounding_mode='floor')
    cells = torch.arange(size_in)
    weights = ((cells[None, :] >= start[:, None]) & (cells[None, :] < end[:, None])).float()
    return weights / weights.sum(dim=1, keepdim=True)


class MatMulAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, which ONNX expresses for every input size (the TorchScript
    exporter writes adaptive pooling only where the output size divides the input size, and never for dynamic
    sizes; UperNet's pyramid pooling pools to 1, 2, 3 and 6 cells)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        rows = adaptive_pool_matrix(height, self.output_size[0] or height).to(x)
        cols = adaptive_pool_matrix(width, self.output_size[1] or width).to(x)
        return rows @ x @ cols.T


@contextlib.contextmanager
def exportable(model: nn.Module):
    """Within the block, ``model``'s ``nn.AdaptiveAvgPool2d`` modules are :class:`MatMulAdaptiveAvgPool2d`."""
    swapped = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.AdaptiveAvgPool2d:
                swapped.append((parent, name, child))
                setattr(parent, name, MatMulAdaptiveAvgPool2d(child.output_size))
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def check_dynamic_support(model: nn.Module, shape: Tuple[int, int]) -> None:
    """Raise :class:`ExportError` if a graph of ``model`` traced at ``shape`` would be valid at that size only: each
    module that knows such a rule of its own (our backbones' ``dynamic_export_problem``) is asked."""
    for module in model.modules():
        ask = getattr(module, 'dynamic_export_problem', None)
        problem = ask(tuple(shape)) if callable(ask) else None
        if problem:
            raise ExportError(problem)


def trace_onnx(wrapper: ExportWrapper, shape: Tuple[int, int], dynamic: bool = False,
               batch_size: int = 1) -> Tuple[bytes, torch.Tensor]:
    """Trace ``wrapper`` on a random ``(batch_size, 3, *shape)`` input; returns the ONNX model (serialised, in
    memory) and that input. ``dynamic`` makes height and width dynamic (the batch size stays as exported)."""
    if dynamic:
        check_dynamic_support(wrapper, shape)
    wrapper.eval()
    x = torch.randn(batch_size, 3, *shape, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with torch.no_grad():
        try:
            wrapper(x)  # sets output_names
        except ValueError as err:  # the backbones' input checks (too small an input ...)
            raise ExportError(f'the model cannot run at the export size {shape[0]}x{shape[1]}: {err}') from err
        names = list(wrapper.output_names)
        dynamic_axes = {'input': {2: 'height', 3: 'width'}} if dynamic else None
        with exportable(wrapper), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the tracer's notes on Python values frozen into the graph
            opset = export_opset()
            try:
                torch.onnx.export(wrapper, (x, ), buffer, opset_version=opset, **_TORCHSCRIPT_EXPORTER,
                                  input_names=['input'], output_names=names, dynamic_axes=dynamic_axes)
            except Exception as err:  # the exporter raises several types; all mean "this graph has no ONNX form"
                raise ExportError(f'torch.onnx.export (opset {opset}) cannot export this {type(wrapper.model).__name__}'
                                  f' ({wrapper.kind}): {type(err).__name__}: {str(err).splitlines()[0]}') from err
    return buffer.getvalue(), x


def export_onnx(wrapper: ExportWrapper, shape: Tuple[int, int], path, dynamic: bool = False,
                tolerance: float = TOLERANCE) -> List[Tuple[Tuple[int, ...], 'OrderedDict[str, float]']]:
    """Export ``wrapper`` at input ``shape`` to ``path``, written only if onnxruntime reproduces PyTorch.

    The graph is traced in memory (:func:`trace_onnx`) and run by onnxruntime on the export input and, if
    ``dynamic``, on a second input of :func:`second_shape`; outputs must agree within ``tolerance`` (see
    :func:`compare_outputs`). Only then is ``path`` written (atomically: a reader sees the complete file or none).
    On a mismatch :class:`ExportError` is raised and ``path`` is not touched. Returns ``[(input shape, errors)]``.
    """
    from .fileio import atomic_write
    model_bytes, x = trace_onnx(wrapper, shape, dynamic)
    inputs = [x]
    if dynamic:
        inputs.append(torch.randn(x.shape[0], 3, *second_shape(shape), generator=torch.Generator().manual_seed(1)))
    try:
        results = verify_onnx(wrapper, model_bytes, inputs, tolerance)
    except ExportError as err:
        raise ExportError(f'{err} Nothing was written to {path}.') from err
    atomic_write(model_bytes, path)
    return [(tuple(x.shape), errors) for x, errors in zip(inputs, results)]


def compare_outputs(reference: Sequence[torch.Tensor], actual: Sequence[np.ndarray],
                    names: Sequence[str]) -> 'OrderedDict[str, float]':
    """``{name: max |actual - reference| / max |reference|}`` per output (float rounding grows with the largest
    magnitude; a spread-based scale would not do for outputs with a large common offset, such as the class
    scores of a freshly initialised detector head). Shapes must agree."""
    errors = OrderedDict()
    for name, ref, out in zip(names, reference, actual):
        ref = ref.detach().double().numpy()
        if ref.shape != out.shape:
            raise ExportError(f'output {name}: onnxruntime gives shape {out.shape}, PyTorch {ref.shape}')
        scale = float(np.abs(ref).max()) if ref.size else 1.0
        errors[name] = float(np.abs(out.astype(np.float64) - ref).max(initial=0.0)) / (scale or 1.0)
    return errors


def onnx_session(onnx_model, threads: Optional[int] = None):
    """An onnxruntime CPU session of ``onnx_model`` (a path or the serialised model) with ``threads`` intra-op
    threads (onnxruntime's default if None)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    model = os.fspath(onnx_model) if isinstance(onnx_model, (str, os.PathLike)) else onnx_model
    return ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


def run_onnx(onnx_model, x: torch.Tensor, threads: Optional[int] = None) -> List[np.ndarray]:
    """Run ``onnx_model`` (a path, the serialised model or an onnxruntime session) on ``x`` with onnxruntime."""
    session = onnx_model if hasattr(onnx_model, 'run') else onnx_session(onnx_model, threads)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def verify_onnx(wrapper: ExportWrapper, onnx_model, inputs: Sequence[torch.Tensor],
                tolerance: float = TOLERANCE) -> List['OrderedDict[str, float]']:
    """Compare ``onnx_model`` (a path or the serialised model) run by onnxruntime with ``wrapper`` in PyTorch on
    each input; returns the errors per input (see :func:`compare_outputs`). :class:`ExportError` on a mismatch."""
    session = onnx_session(onnx_model)
    results = []
    for x in inputs:
        with torch.no_grad():
            reference = wrapper(x)
        try:
            errors = compare_outputs(reference, run_onnx(session, x), wrapper.output_names)
        except Exception as err:  # onnxruntime refusing the input (a shape the graph fixed) counts as a mismatch
            raise ExportError(f'the ONNX graph failed its onnxruntime check at input {tuple(x.shape)}: {err}') \
                from err
        worst = max(errors, key=errors.get)
        if not errors[worst] <= tolerance:  # NaN fails too
            raise ExportError(
                f'the ONNX graph does not match PyTorch at input {tuple(x.shape)}: output {worst} differs by '
                f'{errors[worst]:.2e} x its largest magnitude (tolerance {tolerance:.0e}).')
        results.append(errors)
    return results


def second_shape(shape: Tuple[int, int], multiple: int = 32) -> Tuple[int, int]:
    """Another input size for checking a dynamic export: each side about 1.25 x, a multiple of ``multiple``."""
    return tuple(int(multiple * math.ceil(1.25 * side / multiple)) for side in shape)


# ----------------------------------------------------------------------------------------------- inference
def predict_with_onnx(model: nn.Module, onnx_file, data: dict) -> list:
    """What ``model.test_step(data)`` returns, with the network run by onnxruntime from ``onnx_file``.

    ``data`` is a batch as the config's test pipeline and ``pseudo_collate`` make it; ``model`` (PyTorch, for its
    data preprocessor and post-processing only) is an mmdet single-stage detector, whose head's
    ``predict_by_feat`` turns the raw outputs into boxes, or an mmseg encoder-decoder with whole-image inference,
    whose decode head's ``predict_by_feat`` and ``postprocess_result`` resize the logits and take the argmax.
    ``onnx_file`` is a path, the serialised model or an onnxruntime session.
    """
    kind = ExportWrapper(model).kind
    if kind not in ('dense_detector', 'segmentor'):
        raise ExportError(f'predict_with_onnx supports single-stage detectors and segmentors, not a '
                          f'{type(model).__name__} ({kind}).')
    if kind == 'segmentor' and model.test_cfg.get('mode', 'whole') != 'whole':
        raise ExportError("predict_with_onnx follows whole-image inference; set the model's test_cfg.mode='whole'.")
    session = onnx_file if hasattr(onnx_file, 'run') else onnx_session(onnx_file)
    with torch.no_grad():
        batch = model.data_preprocessor(data, False)
        inputs, samples = batch['inputs'], batch['data_samples']
        exported = session.get_inputs()[0].shape  # ints, or names for dynamic axes
        if any(isinstance(e, int) and e != a for e, a in zip(exported, inputs.shape)):
            raise ExportError(f'the ONNX file was exported for inputs of shape {exported}, but this batch is '
                              f'{tuple(inputs.shape)} after preprocessing: export it with --shape '
                              f'{inputs.shape[2]} {inputs.shape[3]} (or --dynamic where the model allows it).')
        outputs = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
        groups = group_outputs([o.name for o in session.get_outputs()], [torch.from_numpy(o) for o in outputs])
        metas = [sample.metainfo for sample in samples]
        if kind == 'segmentor':
            return model.postprocess_result(model.decode_head.predict_by_feat(groups['seg_logits'], metas), samples)
        results = model.bbox_head.predict_by_feat(*groups.values(), batch_img_metas=metas, rescale=True)
        return model.add_pred_to_datasample(samples, results)


# ----------------------------------------------------------------------------------------------- models
def build_model(config, checkpoint: Optional[str] = None, backbone_only: bool = False,
                cfg_options: Optional[dict] = None, trust: bool = False) -> Tuple[nn.Module, object]:
    """The config's model in eval mode on CPU with ``checkpoint`` loaded strictly (random init without one).

    A whole-model checkpoint (what tools/train.py writes) is loaded into the whole model. With ``backbone_only``,
    ImageNet checkpoints (official, timm or converted) are accepted too and loaded into the backbone. Checkpoints
    are read by :func:`mmdualvit.checkpoint.read_checkpoint` (``weights_only`` unless ``trust``).
    """
    from .building import build_from_config
    from .checkpoint import load_checkpoint_weights, load_pretrained, read_checkpoint

    # a whole-model file is read before the model is built: a missing or unsafe file fails fast
    state = read_checkpoint(checkpoint, trust=trust) if checkpoint and not backbone_only else None
    model, cfg = build_from_config(config, cfg_options)
    if not checkpoint:
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)  # not one line per initialised parameter
        try:
            model.init_weights()
        finally:
            logger.setLevel(level)
    elif backbone_only:
        load_pretrained(model.backbone, checkpoint, trust=trust)
    else:
        load_checkpoint_weights(model, state, checkpoint, strict=True)
    return model.eval(), cfg


def describe(errors: Dict[str, float]) -> str:
    """'largest error 1.2e-06 (cls_scores.3)'."""
    worst = max(errors, key=errors.get)
    return f'largest error {errors[worst]:.1e} ({worst})'
