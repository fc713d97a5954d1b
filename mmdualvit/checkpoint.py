"""The one path by which ImageNet checkpoints reach mmdualvit's backbones.

Used by ``init_cfg=dict(type='Pretrained', checkpoint=...)`` of both backbones, by the converters in
``tools/model_converters/`` and by the classifier configs. It accepts raw state_dicts, ``{'state_dict': ...}`` and
``{'model': ...}`` wrappers, ``module.`` prefixes, the official Dual-ViT ``checkpoint-*.pth.tar`` files (which pickle
an ``argparse.Namespace``), official and timm-format Sequencer2D files (``.pth`` or ``.safetensors``), and
detection/segmentation checkpoints (their ``backbone.`` part). Files are read with ``weights_only=True``; a load
that would leave any backbone parameter uninitialised is an error, never a warning.
"""
import argparse
import hashlib
import os
import pickle
import re
import zipfile
from collections import Counter, OrderedDict
from typing import Callable, Dict, Optional

import torch
from mmengine.logging import print_log

WRAPPER_KEYS = ('state_dict', 'model', 'module')


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as asked; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------- reading files
def read_checkpoint(path: str, trust: bool = False) -> dict:
    """Read a checkpoint file (``.pth``/``.pth.tar``/``.pt`` pickle or ``.safetensors``) on CPU.

    Args:
        path: Local file.
        trust: Read with ``weights_only=False``. Only for a file whose origin you trust: unpickling may run code.

    Raises:
        CheckpointError: the file is missing, a directory, truncated/corrupt, or needs types that safe loading
            refuses.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f'checkpoint file {path!r} does not exist. Download the official ImageNet weights '
                              f"(README, 'Checkpoints') and place them there, or point the config at them with "
                              f'--cfg-options model.backbone.init_cfg.checkpoint=PATH '
                              f'(model.backbone.init_cfg=None trains from scratch).')
    if os.path.isdir(path):
        raise CheckpointError(f'checkpoint path {path!r} is a directory; give the checkpoint file inside it '
                              f'(e.g. {os.path.join(path, "dualvit_s.pth")!r}).')
    if path.endswith('.safetensors'):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device='cpu')
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f'checkpoint file {path!r} is truncated or corrupt ({err}); download it again '
                                  f'and compare its SHA-256.') from err
    try:
        if trust:
            return torch.load(path, map_location='cpu', weights_only=False)
        # Besides tensors and containers, only the data types of mmdualvit.safe_globals are allowed (e.g. the
        # argparse.Namespace that official Dual-ViT checkpoints pickle).
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        if 'Weights only load failed' not in str(err) and 'Unsupported' not in str(err):
            raise CheckpointError(f'checkpoint file {path!r} is truncated or corrupt ({_first_line(err)}); download '
                                  f'it again and compare its SHA-256.') from err
        found = re.findall(r'(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)', str(err))
        needs = found[0] if found else 'a type that is not a tensor or a plain container'
        raise CheckpointError(
            f'checkpoint file {path!r} needs {needs} to unpickle, which safe loading (weights_only=True) refuses: '
            f'unpickling it could run code. If you trust where the file comes from, convert it once with '
            f'`python tools/model_converters/dualvit2mmdualvit.py --trust-pickle SRC DST` (or sequencer2mmdualvit.py)'
            f' and use the tensors-only output.') from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f'checkpoint file {path!r} is truncated or corrupt ({_first_line(err)}); download it '
                              f'again and compare its SHA-256.') from err


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def extract_state_dict(checkpoint: dict, source: str = 'checkpoint') -> 'OrderedDict[str, torch.Tensor]':
    """Unwrap ``state_dict``/``model`` wrappers and ``module.`` prefixes; keep tensors only."""
    state = checkpoint
    while isinstance(state, dict) and not _is_tensor_dict(state):
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(f'{source} holds no state_dict: top-level keys are {sorted(state)[:8]}; expected '
                                  f'tensors, or one of {WRAPPER_KEYS} holding them.')
        state = inner
    if not isinstance(state, dict):
        raise CheckpointError(f'{source} holds a {type(state).__name__}, not a state_dict.')
    out = OrderedDict()
    for key, value in state.items():
        if torch.is_tensor(value):
            out[key[len('module.'):] if key.startswith('module.') else key] = value
    return out


def _is_tensor_dict(d: dict) -> bool:
    return len(d) > 0 and all(torch.is_tensor(v) for v in d.values())


# ----------------------------------------------------------------------------------------------- conversions
def convert_dualvit(state_dict: Dict[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Official Dual-ViT checkpoint (any wrapper) -> ours; idempotent.

    Names are identical. A semantic query trained on another square grid is resampled to the 8x8 grid the model
    stores (at run time it is resampled again to the input's pooled grid), so 224 and 384 checkpoints both load.
    """
    from .models.backbones.dual_vit import resize_semantic_query
    state_dict = extract_state_dict(state_dict, 'Dual-ViT checkpoint')
    if 'q' in state_dict:
        state_dict['q'] = resize_semantic_query(state_dict['q'])
    return state_dict


_TIMM_BLOCK = re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.')
_TIMM_DOWN = re.compile(r'^stages\.(\d+)\.downsample\.down\.')
_OFFICIAL_BLOCK = re.compile(r'^blocks\.(\d+)\.(\d+)\.')


def convert_sequencer2d(state_dict: Dict[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Sequencer2D checkpoint in official or timm naming -> official naming (ours); idempotent.

    timm names ``stages.i.blocks.j``, ``stages.i.downsample.down`` and ``head.fc``; the official release (and this
    package) names ``blocks.i.j``, ``blocks.{i-1}.{n_{i-1}}.down`` (the downsampling conv closes the previous stage,
    n = blocks in that stage) and ``head``.
    """
    state_dict = extract_state_dict(state_dict, 'Sequencer2D checkpoint')
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


def _rules(model: torch.nn.Module):
    """(converter, prefixes expected to be unused, prefixes of parameters no ImageNet checkpoint has)."""
    name = type(model).__name__
    if name == 'DualViT':
        unused = ['post_network.', 'head.', 'aux_head.']
        if model.out_type == 'featmap':  # the dense last block drops the semantic tokens and their FFN
            unused.append(f'block{model.num_stages}.{model.depths[-1] - 1}.mlp.fc_proxy.')
        else:  # the classifier head owns the final norm
            unused.append(f'norm{model.num_stages}.')
        return convert_dualvit, unused, []
    if name == 'Sequencer2D':
        return convert_sequencer2d, ['head.'], ['pyramid_adapters.']
    raise CheckpointError(f'no checkpoint rules for {name}; mmdualvit loads DualViT and Sequencer2D checkpoints.')


def _looks_like(keys) -> str:
    keys = list(keys)
    if any('rnn_tokens' in k for k in keys):
        return 'a Sequencer2D checkpoint'
    if any(k.startswith(('block1.', 'patch_embed1.')) for k in keys):
        return 'a Dual-ViT checkpoint'
    return 'an unrecognised checkpoint'


def _group(keys, prefixes) -> str:
    """'post_network.* (18), head.* (2)': counts of ``keys`` per prefix, in the order of ``prefixes``."""
    counts = Counter(next(p for p in prefixes if k.startswith(p)) for k in keys)
    return ', '.join(f'{p}* ({counts[p]})' for p in prefixes if counts[p])


# ----------------------------------------------------------------------------------------------- loading
def load_backbone_checkpoint(model: torch.nn.Module, path: str, prefix: Optional[str] = None,
                             logger: str = 'current') -> dict:
    """Load an ImageNet (or detection/segmentation) checkpoint into a DualViT or Sequencer2D backbone, strictly.

    Every backbone parameter and buffer must be found with the right shape. Keys known to be unused by the backbone
    (classifier heads, the last Dual-ViT block's ``fc_proxy``) are reported in one info line; anything else is an
    error naming the file and the fix. Returns a summary dict.
    """
    converter, unused_prefixes, new_prefixes = _rules(model)
    state = extract_state_dict(read_checkpoint(path), repr(path))
    wanted = prefix or ''
    if not wanted and any(k.startswith('backbone.') for k in state):
        wanted = 'backbone.'  # a detector/segmentor/mmpretrain checkpoint: its backbone is what we want
        print_log(f'{path}: a whole-model checkpoint; loading its backbone.* weights.', logger=logger)
    if wanted:
        state = OrderedDict((k[len(wanted):], v) for k, v in state.items() if k.startswith(wanted))
        if not state:
            raise CheckpointError(f'checkpoint {path!r} has no keys under prefix {wanted!r}; remove `prefix` from '
                                  f'init_cfg or check the file.')
    state = converter(state)
    own = model.state_dict()
    name = f'{type(model).__name__}'
    new_keys = [k for k in own if k.startswith(tuple(new_prefixes))]
    expected = [k for k in own if k not in new_keys]
    missing = [k for k in expected if k not in state]
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in expected
                  if k in state and state[k].shape != own[k].shape]
    unexpected = [k for k in state if k not in own]
    expected_unused = [k for k in unexpected if k.startswith(tuple(unused_prefixes))]
    surplus = [k for k in unexpected if k not in expected_unused]

    if mismatched:
        shown = '; '.join(f'{k}: checkpoint {a} vs model {b}' for k, a, b in mismatched[:3])
        raise CheckpointError(
            f'checkpoint {path!r} does not fit this {name}: {len(mismatched)} of {len(expected)} tensors have other '
            f'shapes (e.g. {shown}). It is probably another variant or architecture ({_looks_like(state)}); use the '
            f'checkpoint that matches the config\'s arch, or change `arch`.')
    if missing:
        kind = _looks_like(state)
        raise CheckpointError(
            f'checkpoint {path!r} lacks {len(missing)} of {len(expected)} {name} parameters/buffers '
            f'(e.g. {", ".join(missing[:3])}); loading it would leave them randomly initialised. The file looks like '
            f'{kind} with keys such as {", ".join(list(state)[:3])}. If it is a detector/segmentor checkpoint, '
            f"use `load_from` for the whole model or set init_cfg prefix='backbone.'; otherwise convert it with "
            f'tools/model_converters/.')
    if surplus:
        raise CheckpointError(
            f'checkpoint {path!r} holds {len(surplus)} tensors this {name} does not have (e.g. '
            f'{", ".join(surplus[:3])}); it is probably {_looks_like(state)} of another variant. Use the matching '
            f'checkpoint, or convert it with tools/model_converters/.')
    to_load = OrderedDict((k, state[k]) for k in expected)
    to_load.update((k, own[k]) for k in new_keys)
    model.load_state_dict(to_load, strict=True)
    message = f'Loaded {len(expected)} tensors into {name} from {path}: all backbone weights found.'
    if expected_unused:
        message += f' Unused (expected, classifier-only): {_group(expected_unused, unused_prefixes)}.'
    if new_keys:
        message += f' Not in ImageNet checkpoints, kept at their init: {_group(new_keys, new_prefixes)}.'
    print_log(message, logger=logger)
    return dict(loaded=len(expected), unused=expected_unused, new=new_keys)


def init_from_pretrained_cfg(model: torch.nn.Module) -> bool:
    """Load the checkpoint of a ``dict(type='Pretrained', checkpoint=..., prefix=...)`` init_cfg, strictly.

    Returns False (and does nothing) when the model's init_cfg is not ``Pretrained``.
    """
    init_cfg = getattr(model, 'init_cfg', None)
    if not isinstance(init_cfg, dict) or init_cfg.get('type') != 'Pretrained':
        return False
    load_backbone_checkpoint(model, init_cfg['checkpoint'], prefix=init_cfg.get('prefix'))
    return True


# ----------------------------------------------------------------------------------------------- converter files
def convert_checkpoint_file(src: str, dst: str, converter: Callable, trust: bool = False) -> dict:
    """Read ``src``, convert with ``converter`` and write a tensors-only file to ``dst`` (atomically).

    Returns a summary: keys kept/dropped, parameter count and the SHA-256 of the written file.
    """
    raw = read_checkpoint(src, trust=trust)
    total = _count_tensors(raw)
    state = converter(raw)
    state = OrderedDict((k, v.detach().clone().contiguous()) for k, v in state.items())
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = f'{dst}.tmp{os.getpid()}'
    torch.save(state, tmp)
    os.replace(tmp, dst)  # never leave a half-written file under the final name
    with open(dst, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    params = sum(v.numel() for k, v in state.items() if v.is_floating_point())
    return dict(kept=len(state), dropped=total - len(state), params=params, sha256=digest, dst=dst)


def _count_tensors(obj) -> int:
    if torch.is_tensor(obj):
        return 1
    if isinstance(obj, dict):
        return sum(_count_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_count_tensors(v) for v in obj)
    return 0


def converter_cli(converter: Callable, description: str, argv=None) -> dict:
    """Command line of the ``tools/model_converters`` scripts: ``SRC DST [--trust-pickle]``, prints a summary."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('src', help='official or timm checkpoint (.pth, .pth.tar, .safetensors)')
    parser.add_argument('dst', help='output: a tensors-only state_dict that loads with weights_only=True')
    parser.add_argument('--trust-pickle', action='store_true',
                        help='read SRC with weights_only=False (only for a file whose origin you trust)')
    args = parser.parse_args(argv)
    try:
        summary = convert_checkpoint_file(args.src, args.dst, converter, trust=args.trust_pickle)
    except CheckpointError as err:
        parser.exit(2, f'error: {err}\n')
    print(f"wrote {summary['dst']}: kept {summary['kept']} tensors, dropped {summary['dropped']} "
          f"(optimizer/scaler state and other non-model entries), {summary['params'] / 1e6:.2f}M parameters, "
          f"sha256 {summary['sha256']}")
    return summary
