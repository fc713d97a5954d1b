"""The strict loader by which ImageNet checkpoints reach a model; it knows no architecture.

It reads a file (local, or any URL an mmengine file backend serves: http(s), s3 ...), unwraps it, lets the model
convert it, loads it strictly and reports. Conversion belongs to the model: a class with a ``convert_checkpoint``
classmethod (see :class:`mmdualvit.models.utils.ConvertsCheckpoints`) maps official and timm names to its own, and
may name checkpoint keys it leaves unused on purpose and tensors no checkpoint holds. Subclasses inherit all of it.

Used by ``init_cfg=dict(type='Pretrained', checkpoint=...)`` of both backbones (see :func:`init_weights_strictly`)
and by the converters in ``tools/model_converters/``. Wrappers ``state_dict`` / ``model`` / ``module``, ``module.``
prefixes and whole detector/segmentor checkpoints (their ``backbone.`` part) are accepted. Files are read with
``weights_only=True``; a load that would leave any parameter uninitialised is an error, never a warning.
"""
import argparse
import hashlib
import os
import pickle
import re
import zipfile
from collections import Counter, OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log

from .engine.runner import CheckpointError  # one error type for every checkpoint problem in mmdualvit

WRAPPER_KEYS = ('state_dict', 'model', 'module')
PRETRAINED = 'Pretrained'
# torch >= 2.4 says "Unsupported global: GLOBAL x.y", older torch "Unsupported class x.y" (both: a refused global).
# "Unsupported operand 233" and the like come from random or damaged bytes instead.
_REFUSED_GLOBAL = re.compile(r'(?:Unsupported global: GLOBAL|unsupported GLOBAL|Unsupported class) ([\w.]+)')

__all__ = ['CheckpointError', 'read_checkpoint', 'extract_state_dict', 'load_pretrained', 'load_backbone_checkpoint',
           'split_init_cfg', 'init_weights_strictly', 'convert_checkpoint_file', 'converter_cli']


# ----------------------------------------------------------------------------------------------- reading files
def read_checkpoint(path: str, trust: bool = False) -> dict:
    """Read a checkpoint (``.pth``/``.pth.tar``/``.pt`` pickle or ``.safetensors``) on CPU.

    Args:
        path: A local file, or a URL served by an mmengine file backend (``http://``, ``https://``, ``s3://`` ...),
            fetched with :func:`mmengine.fileio.get_local_path`. mmengine's ``CheckpointLoader`` itself is not used
            for the unpickling: its http loader calls ``torch.hub.load_state_dict_from_url`` with
            ``weights_only=False``, which would run code from a downloaded file.
        trust: Read with ``weights_only=False``. Only for a file whose origin you trust: unpickling may run code.

    Raises:
        CheckpointError: the file is missing, a directory, cannot be fetched, truncated/corrupt, or needs types
            that safe loading refuses.
    """
    path = os.fspath(path)
    if '://' in path:
        return _read_remote(path, trust)
    if not os.path.exists(path):
        raise CheckpointError(f'checkpoint file {path!r} does not exist. Download the official ImageNet weights '
                              f"(README, 'Checkpoints') and place them there, or point the config at them with "
                              f'--cfg-options model.backbone.init_cfg.checkpoint=PATH '
                              f'(model.backbone.init_cfg=None trains from scratch).')
    if os.path.isdir(path):
        raise CheckpointError(f'checkpoint path {path!r} is a directory; give the checkpoint file inside it '
                              f'(e.g. {os.path.join(path, "dualvit_s.pth")!r}).')
    return _read_local(path, path, trust)


def _read_remote(url: str, trust: bool) -> dict:
    from mmengine.fileio import get_file_backend, get_local_path
    try:
        get_file_backend(url)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f'checkpoint {url!r}: no mmengine file backend serves this scheme ({err}); use a '
                              f'local path or an http(s)://, s3:// ... URL.') from None
    try:
        with get_local_path(url) as local:
            return _read_local(local, url, trust)
    except CheckpointError:
        raise
    except Exception as err:  # each backend raises its own types (urllib's HTTPError, boto's ClientError ...)
        raise CheckpointError(f'checkpoint {url!r} could not be fetched ({type(err).__name__}: {_first_line(err)});'
                              f' check the URL and your connection, or download the file and give its path.') from err


def _read_local(path: str, name: str, trust: bool) -> dict:
    """Read local ``path``; messages name ``name`` (the URL of a fetched file)."""
    if name.endswith('.safetensors'):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device='cpu')
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f'checkpoint file {name!r} is truncated or corrupt ({err}); download it again '
                                  f'and compare its SHA-256.') from err
    try:
        # Besides tensors and containers, only the types of mmdualvit.safe_globals are allowed (the
        # argparse.Namespace that official Dual-ViT checkpoints pickle).
        return torch.load(path, map_location='cpu', weights_only=not trust)
    except pickle.UnpicklingError as err:
        found = _REFUSED_GLOBAL.findall(str(err))
        if trust or not found:
            raise CheckpointError(f'checkpoint file {name!r} is truncated or corrupt ({_unpickler_complaint(err)});'
                                  f' download it again and compare its SHA-256.') from None
        raise CheckpointError(
            f'checkpoint file {name!r} needs {found[0]} to unpickle, which safe loading (weights_only=True) refuses: '
            f'unpickling it could run code. If you trust where the file comes from, convert it once with '
            f'`python tools/model_converters/dualvit2mmdualvit.py --trust-pickle SRC DST` (or sequencer2mmdualvit.py)'
            f' and use the tensors-only output.') from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as err:
        raise CheckpointError(f'checkpoint file {name!r} is truncated or corrupt ({_first_line(err)}); download it '
                              f'again and compare its SHA-256.') from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _unpickler_complaint(err: Exception) -> str:
    # torch wraps the unpickler's complaint about damaged bytes in advice about weights_only that does not apply.
    skip = ('Weights only load failed', 'Please file an issue', 'Check the documentation', '(1)', '(2)')
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.strip().startswith(skip)]
    return lines[0] if lines else type(err).__name__


def extract_state_dict(checkpoint: dict, source: str = 'checkpoint') -> 'OrderedDict[str, torch.Tensor]':
    """Unwrap ``state_dict``/``model``/``module`` wrappers and ``module.`` prefixes; keep tensors only."""
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


def _looks_like(keys) -> str:
    """A guess at what a state_dict is, for error messages only (conversion never depends on it)."""
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


def _conversion_of(model: torch.nn.Module) -> Tuple[Callable, Sequence[str], Sequence[str]]:
    """The model's converter and its unused / new prefixes; identity and none for a model that declares nothing."""
    convert = getattr(model, 'convert_checkpoint', None) or OrderedDict
    unused = tuple(getattr(model, 'checkpoint_unused_prefixes', tuple)())
    new = tuple(getattr(model, 'checkpoint_new_prefixes', tuple)())
    return convert, unused, new


# ----------------------------------------------------------------------------------------------- loading
def load_pretrained(model: torch.nn.Module, path: str, prefix: Optional[str] = None,
                    logger: str = 'current') -> dict:
    """Load an ImageNet (or detection/segmentation) checkpoint into ``model``, strictly.

    The model's ``convert_checkpoint`` maps the file's names first. Every parameter and buffer must then be found
    with the right shape, except those under the model's ``checkpoint_new_prefixes()``. Keys under its
    ``checkpoint_unused_prefixes()`` (classifier heads ...) are reported in one info line; anything else is an
    error naming the file and the fix, and the model is left untouched. Returns a summary dict.
    """
    convert, unused_prefixes, new_prefixes = _conversion_of(model)
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
    state = convert(state)
    own = model.state_dict()
    name = type(model).__name__
    new_keys = [k for k in own if k.startswith(new_prefixes)] if new_prefixes else []
    expected = [k for k in own if k not in new_keys]
    missing = [k for k in expected if k not in state]
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in expected
                  if k in state and state[k].shape != own[k].shape]
    unexpected = [k for k in state if k not in own]
    expected_unused = [k for k in unexpected if unused_prefixes and k.startswith(unused_prefixes)]
    surplus = [k for k in unexpected if k not in expected_unused]

    if mismatched:
        shown = '; '.join(f'{k}: checkpoint {a} vs model {b}' for k, a, b in mismatched[:3])
        raise CheckpointError(
            f'checkpoint {path!r} does not fit this {name}: {len(mismatched)} of {len(expected)} tensors have other '
            f'shapes (e.g. {shown}). It is probably another variant or architecture ({_looks_like(state)}); use the '
            f'checkpoint that matches the config\'s arch, or change `arch`.')
    if missing:
        raise CheckpointError(
            f'checkpoint {path!r} lacks {len(missing)} of {len(expected)} {name} parameters/buffers '
            f'(e.g. {", ".join(missing[:3])}); loading it would leave them randomly initialised. The file looks like '
            f'{_looks_like(state)} with keys such as {", ".join(list(state)[:3])}. If it is a detector/segmentor '
            f"checkpoint, use `load_from` for the whole model or set init_cfg prefix='backbone.'; otherwise convert "
            f'it with tools/model_converters/.')
    if surplus:
        raise CheckpointError(
            f'checkpoint {path!r} holds {len(surplus)} tensors this {name} does not have (e.g. '
            f'{", ".join(surplus[:3])}); it is probably {_looks_like(state)} of another variant. Use the matching '
            f'checkpoint, or convert it with tools/model_converters/.')
    to_load = OrderedDict((k, state[k]) for k in expected)
    to_load.update((k, own[k]) for k in new_keys)
    model.load_state_dict(to_load, strict=True)  # the model's own conversion runs again here: a no-op, idempotent
    message = f'Loaded {len(expected)} tensors into {name} from {path}: all backbone weights found.'
    if expected_unused:
        message += f' Unused (expected, classifier-only): {_group(expected_unused, unused_prefixes)}.'
    if new_keys:
        message += f' Not in ImageNet checkpoints, kept at their init: {_group(new_keys, new_prefixes)}.'
    print_log(message, logger=logger)
    return dict(loaded=len(expected), unused=expected_unused, new=new_keys)


load_backbone_checkpoint = load_pretrained  # the name used by earlier releases and the README


# ----------------------------------------------------------------------------------------------- init_cfg
def split_init_cfg(init_cfg, owner: str) -> Tuple[List[dict], List[dict]]:
    """Split an init_cfg (None, a dict or a list of dicts) into its ``Pretrained`` entries and the others.

    Raises:
        ValueError: an entry is not a dict with a ``type`` that mmengine's ``WEIGHT_INITIALIZERS`` knows (types are
            case-sensitive: ``'pretrained'`` is a typo), or a ``Pretrained`` entry has no ``checkpoint``.
    """
    from mmengine.registry import WEIGHT_INITIALIZERS
    if init_cfg is None:
        return [], []
    entries = [init_cfg] if isinstance(init_cfg, dict) else init_cfg
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f'{owner}: init_cfg must be a dict or a list of dicts, got {type(init_cfg).__name__}.')
    pretrained, others = [], []
    for entry in entries:
        kind = entry.get('type') if isinstance(entry, dict) else None
        if kind == PRETRAINED:
            if not entry.get('checkpoint'):
                raise ValueError(f"{owner}: init_cfg {dict(entry)} names no checkpoint; add checkpoint='PATH' "
                                 f'(or drop the entry to train from scratch).')
            pretrained.append(entry)
        elif isinstance(kind, str) and WEIGHT_INITIALIZERS.get(kind) is not None:
            others.append(entry)
        else:
            known = sorted(set(WEIGHT_INITIALIZERS.module_dict) | {PRETRAINED})
            raise ValueError(f'{owner}: unknown init_cfg type {kind!r} in {entry!r}; use one of {known} '
                             f'(case-sensitive, e.g. {PRETRAINED!r} to load a checkpoint).')
    return pretrained, others


def init_weights_strictly(model: torch.nn.Module, default_init: Callable[[], None],
                          base_init_weights: Callable[[], None]) -> None:
    """``init_weights`` for a model that owns its checkpoint conversion.

    Order (as mmengine's): the model's own random init (``default_init``, skipped when a checkpoint follows), then
    every non-``Pretrained`` init_cfg entry through mmengine (``base_init_weights``, i.e. ``super().init_weights``),
    then each ``Pretrained`` entry through :func:`load_pretrained`, which refuses partial loads. mmengine's own
    ``PretrainedInit`` never runs: it loads with ``strict=False``.
    """
    owner = type(model).__name__
    pretrained, others = split_init_cfg(model.init_cfg, owner)
    if not pretrained:
        default_init()
    if others:  # (without any, mmengine's pass would only dump a long "unchanged by init_cfg" table)
        original = model.init_cfg
        model.init_cfg = others
        try:
            base_init_weights()
        finally:
            model.init_cfg = original
    for entry in pretrained:
        load_pretrained(model, entry['checkpoint'], prefix=entry.get('prefix'))
    model._is_init = True


# ----------------------------------------------------------------------------------------------- converter files
def convert_checkpoint_file(src: str, dst: str, model_cls: type, trust: bool = False) -> dict:
    """Read ``src``, convert it with ``model_cls.convert_checkpoint`` and write a tensors-only file to ``dst``.

    The file is refused unless ``model_cls.is_own_checkpoint`` accepts the converted names (a converter for one
    architecture does not write another's file). ``dst`` appears complete or not at all: the temporary is removed
    whatever goes wrong. Returns a summary: keys kept/dropped, parameter count and the SHA-256 of the written file.
    """
    raw = read_checkpoint(src, trust=trust)
    total = _count_tensors(raw)
    state = model_cls.convert_checkpoint(extract_state_dict(raw, repr(src)))
    if not model_cls.is_own_checkpoint(state):
        raise CheckpointError(f'{src!r} is not a {model_cls.__name__} checkpoint: it looks like '
                              f'{_looks_like(state)} (keys such as {", ".join(list(state)[:3])}). Use the converter '
                              f'of that architecture in tools/model_converters/.')
    state = OrderedDict((k, v.detach().clone().contiguous()) for k, v in state.items())
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = f'{dst}.tmp{os.getpid()}'
    try:
        torch.save(state, tmp)
        os.replace(tmp, dst)  # never a half-written file under the final name
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with open(dst, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    params = sum(v.numel() for v in state.values() if v.is_floating_point())
    return dict(kept=len(state), dropped=total - len(state), params=params, sha256=digest, dst=dst)


def _count_tensors(obj) -> int:
    if torch.is_tensor(obj):
        return 1
    if isinstance(obj, dict):
        return sum(_count_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_count_tensors(v) for v in obj)
    return 0


def converter_cli(model_cls: type, description: str, argv=None) -> dict:
    """Command line of the ``tools/model_converters`` scripts: ``SRC DST [--trust-pickle]``, prints a summary."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('src', help='official or timm checkpoint (.pth, .pth.tar, .safetensors), path or URL')
    parser.add_argument('dst', help='output: a tensors-only state_dict that loads with weights_only=True')
    parser.add_argument('--trust-pickle', action='store_true',
                        help='read SRC with weights_only=False (only for a file whose origin you trust)')
    args = parser.parse_args(argv)
    try:
        summary = convert_checkpoint_file(args.src, args.dst, model_cls, trust=args.trust_pickle)
    except CheckpointError as err:
        parser.exit(2, f'error: {err}\n')
    print(f"wrote {summary['dst']}: kept {summary['kept']} tensors, dropped {summary['dropped']} "
          f"(optimizer/scaler state and other non-model entries), {summary['params'] / 1e6:.2f}M parameters, "
          f"sha256 {summary['sha256']}")
    return summary
