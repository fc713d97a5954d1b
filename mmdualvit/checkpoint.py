"""The one checkpoint layer: read a file safely, compare it with a model, load it strictly, convert files.

Everything in mmdualvit that touches a checkpoint goes through here: ``init_cfg=dict(type='Pretrained', ...)`` of
both backbones (:func:`init_weights_strictly`), ``load_from`` / ``--resume`` / ``tools/test.py`` of
:class:`mmdualvit.engine.StrictRunner` (:func:`load_checkpoint_weights`) and the converters in
``tools/model_converters/`` (:func:`converter_cli`). It imports no model and nothing from :mod:`mmdualvit.engine`.

- :func:`read_checkpoint` is the only reader: local files, every mmengine file-backend URL (http(s) through one
  download cache, with a timeout, a minimum rate and a size limit; s3 ...), model-zoo names (``open-mmlab://``,
  ``torchvision://``, ``mmcls://``: resolved to their URL), pickles and ``.safetensors``; pickles with
  ``weights_only=True`` unless the caller passes ``trust=True`` (the ``--trust-checkpoint`` flag, never an
  environment variable).
- :func:`compare_weights` is the only key/shape/value comparison; :func:`load_pretrained` and
  :func:`load_checkpoint_weights` word its result for their users and then load what matches, once.

Conversion belongs to the models: a module with a ``convert_checkpoint`` classmethod (see
:class:`mmdualvit.models.utils.ConvertsCheckpoints`) maps official and timm names to its own, idempotently, and may
name checkpoint keys it leaves unused on purpose (``checkpoint_unused_prefixes``). The architecture guesses below
(:func:`_looks_like`) only word error messages.
"""
import argparse
import errno
import hashlib
import math
import os
import pickle
import re
import stat
import time
import urllib.parse
import urllib.request
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from filelock import FileLock
from mmengine.logging import print_log

from .fileio import atomic_open, atomic_write, remove_temporaries, unwritable_reason

WRAPPER_KEYS = ('state_dict', 'model', 'module')
PRETRAINED = 'Pretrained'
# Remote files: each setting is read from the environment when a download starts (a bad value is named then, not
# when mmdualvit is imported). name: (default, what it bounds).
DOWNLOAD_SETTINGS = {
    'MMDUALVIT_DOWNLOAD_TIMEOUT': (60.0, 'seconds to wait for the server to connect or send anything'),
    'MMDUALVIT_DOWNLOAD_LIMIT_MB': (4096.0, 'the largest file in MiB'),
    'MMDUALVIT_DOWNLOAD_MIN_RATE_KB': (32.0, 'the slowest average rate in KiB/s, checked once the timeout has passed'),
}
# torch.hub's convention: a hex SHA-256 prefix after the last '-' of a file name ('resnet18-f37072fd.pth', mmdet's
# '..._20200205-d4b0c5d6.pth'); at least 8 digits, so that 'checkpoint-309.pth.tar' names no hash.
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.')
_SHOWN = 5  # keys listed per kind in an error message

__all__ = ['CheckpointError', 'MissingCheckpointError', 'DamagedCheckpointError', 'DownloadError', 'read_checkpoint',
           'fetch_cached', 'extract_state_dict', 'compare_weights', 'load_pretrained', 'load_checkpoint_weights',
           'split_init_cfg', 'init_weights_strictly', 'convert_checkpoint_file', 'converter_cli']


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe to unpickle, or not matching the model."""


class MissingCheckpointError(CheckpointError):
    """The checkpoint path names no file (callers add where the path came from)."""


class DamagedCheckpointError(CheckpointError):
    """The file's bytes are damaged: truncated, empty or corrupt (not a file that is intact but refused)."""


class DownloadError(CheckpointError):
    """A remote checkpoint could not be fetched (callers add the offline alternative)."""


# ----------------------------------------------------------------------------------------------- reading files
def read_checkpoint(path: str, trust: bool = False) -> dict:
    """Read a checkpoint (``.pth``/``.pth.tar``/``.pt`` pickle or ``.safetensors``) on CPU.

    Args:
        path: A local file, a URL served by an mmengine file backend (``http(s)://``, ``s3://`` ...), or a model-zoo
            name mmengine knows (``open-mmlab://``, ``openmmlab://``, ``torchvision://``, ``mmcls://``), which is
            resolved to its URL. mmengine's ``CheckpointLoader`` is not used for any of them: it unpickles with
            torch's default ``weights_only`` (``False`` before torch 2.6), and its http loader has no timeout.
        trust: Read pickles with ``weights_only=False``. Only for a file whose origin you trust: unpickling may run
            code.

    Raises:
        CheckpointError: the file is missing, not a regular file, cannot be fetched, truncated/corrupt, larger in
            memory than on disk (compressed records, broadcast views), or needs types that safe loading refuses.
    """
    path = os.fspath(path)
    if '://' in path:
        return _read_remote(path, trust)
    _check_regular_file(path)
    return _read_local(path, path, trust)


def _check_regular_file(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MissingCheckpointError(f'checkpoint file {path!r} does not exist.') from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CheckpointError(f'checkpoint path {path!r} is a symbolic link loop; point it at the real file.') \
                from None
        raise CheckpointError(f'checkpoint path {path!r} cannot be read ({err.strerror}); check its permissions.') \
            from None
    if stat.S_ISDIR(mode):
        raise CheckpointError(f'checkpoint path {path!r} is a directory; give the checkpoint file inside it '
                              f'(e.g. {os.path.join(path, "dualvit_s.pth")!r}).')
    if not stat.S_ISREG(mode):
        kind = 'a FIFO' if stat.S_ISFIFO(mode) else 'a socket' if stat.S_ISSOCK(mode) else 'a device'
        raise CheckpointError(f'checkpoint path {path!r} is {kind}, not a regular file; reading it could block or '
                              f'never end. Copy the checkpoint to a file and give that path.')


def _read_remote(url: str, trust: bool) -> dict:
    from mmengine.fileio import get_file_backend, get_local_path
    resolved = _resolve_model_zoo(url)
    if resolved != url:
        print_log(f'{url} is {resolved}', logger='current')
        return _read_remote(resolved, trust) if '://' in resolved else _read_local(resolved, url, trust)
    if url.startswith(('http://', 'https://')):
        local = fetch_cached(url)
        try:
            return _read_local(local, url, trust)
        except CheckpointError as err:
            raise type(err)(f'{err}{_cache_note(url)}') from None
    try:
        get_file_backend(url)
    except ImportError as err:
        raise CheckpointError(f'checkpoint {url!r}: mmengine\'s file backend for this scheme needs a client that is '
                              f'not installed ({err}); install it, or download the file and give its path.') from None
    except (KeyError, ValueError) as err:
        raise CheckpointError(f'checkpoint {url!r}: no mmengine file backend serves this scheme ({err}); use a '
                              f'local path, an http(s)://, s3:// ... URL, or open-mmlab:// / torchvision:// '
                              f'names.') from None
    try:
        with get_local_path(url) as local:
            return _read_local(local, url, trust)
    except CheckpointError:
        raise
    except Exception as err:  # each backend raises its own types (boto's ClientError, a missing client ...)
        raise CheckpointError(f'checkpoint {url!r} could not be fetched ({type(err).__name__}: {_first_line(err)});'
                              f' check the URL, your credentials and that the backend\'s client is installed, or '
                              f'download the file and give its path.') from err


def _resolve_model_zoo(url: str) -> str:
    """mmengine's model-zoo name -> the URL (or file under mmengine's home) it stands for; other URLs unchanged.

    Not through ``CheckpointLoader.register_scheme``: mmengine's own model-zoo loaders call its ``load_from_http``
    directly (so a safe http loader registered for ``http://`` would not be reached) and unpickle with torch's default
    ``weights_only``; registering ours over them (``force=True``) would change how every other component of the
    user's process loads. Only the name tables are taken from mmengine (public functions; its home folder for
    table entries that are paths).
    """
    from mmengine.runner import checkpoint as mm
    scheme, name = url.split('://', 1)
    if scheme in ('open-mmlab', 'openmmlab'):
        name = mm.get_deprecated_model_names().get(name, name)
        table = mm.get_external_models()
    elif scheme in ('torchvision', 'modelzoo'):
        table = mm.get_torchvision_models()
    elif scheme == 'mmcls':
        table = mm.get_mmcls_models()
    else:
        return url
    if name not in table:
        raise CheckpointError(f'checkpoint {url!r}: mmengine knows no model {name!r} under {scheme}://; give the '
                              f'URL or path of the file instead.')
    target = table[name]
    return target if '://' in target else os.path.join(mm._get_mmengine_home(), target)


def download_cache_path(url: str) -> str:
    """Where :func:`fetch_cached` keeps ``url``: ``torch.hub.get_dir()/checkpoints/<file name>``, the folder
    torch.hub and mmengine's own loader use, so a file either of them fetched is not fetched again."""
    name = os.path.basename(urllib.parse.urlsplit(url).path) or 'checkpoint.pth'
    return os.path.join(torch.hub.get_dir(), 'checkpoints', name)


def _cache_note(url: str) -> str:
    return f' (Read from the download cache: {download_cache_path(url)}; delete that file to fetch it again.)'


def fetch_cached(url: str) -> str:
    """The local path of ``url``'s file in the download cache, fetching it first if it is not there.

    The fetch holds a lock beside the cached file, so the processes of one machine (the ranks of a distributed run,
    or separate runs) fetch it once: the first to take the lock fetches, the others wait and then read its file, or
    try in turn if it failed (it says why). A lock rather than mmengine's rank-0-then-barrier: waiting ranks are not
    bound by the process group's collective timeout, and separate runs take turns too. The holder removes what
    killed downloads left. A file enters the cache complete and checked or not at all: see :func:`_download`.

    Each download records its URL beside the file (``.<name>.url``): the cache is keyed by file name, so a file that
    another URL of the same name fetched is fetched again. A file without a record (fetched by torch.hub or
    mmengine, which record none) is read.
    """
    cached = download_cache_path(url)
    directory, name = os.path.split(cached)
    source = os.path.join(directory, f'.{name}.url')

    def cached_from_url() -> bool:
        if not os.path.isfile(cached):
            return False
        try:
            with open(source) as f:
                return f.read() == url
        except FileNotFoundError:
            return True
    if not cached_from_url():
        reason = unwritable_reason(directory)
        if reason is not None:
            raise DownloadError(f'cannot download {url!r} into the cache folder {directory!r}: {reason}; set '
                                f'TORCH_HOME to a writable folder, or download the file yourself and give its path.')
        os.makedirs(directory, exist_ok=True)
        with FileLock(os.path.join(directory, f'.{name}.lock')):
            if not cached_from_url():
                remove_temporaries(directory, name)
                if os.path.lexists(cached):
                    os.remove(cached)  # another URL's file, before its record is replaced
                try:
                    _download(url, cached, record=source)
                except BaseException:
                    for path in (cached, source):  # the file first: a record that names no file is harmless
                        if os.path.lexists(path):
                            os.remove(path)
                    raise
    return cached


def download_setting(name: str) -> float:
    """The value of download setting ``name`` (see :data:`DOWNLOAD_SETTINGS`) from the environment, or its default."""
    default, meaning = DOWNLOAD_SETTINGS[name]
    raw = os.environ.get(name, '').strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise CheckpointError(f'{name}={raw!r} is not a positive number ({meaning}); set it to one such as '
                              f'{default:g} (the default), or unset it.')
    return value


def _download(url: str, dest: str, record: str) -> None:
    """Fetch ``url`` into ``dest`` within the download settings, logging progress every 30 s; ``url`` is written into
    ``record`` first (so that no kill leaves ``dest`` under another URL's record).

    mmengine's HTTP backend (and torch.hub) read without a timeout, an overall bound or a size limit: a server that
    never answers, or one that sends a byte every few seconds, hangs the run for days; one that streams forever fills
    the disk. Here the file is written to a temporary next to ``dest`` and renamed into place only once complete (as
    many bytes as the server declared) and, where the file name carries a SHA-256 prefix, matching it.
    """
    timeout, limit_mb, min_rate_kb = (download_setting(name) for name in DOWNLOAD_SETTINGS)
    limit = int(limit_mb * 2**20)
    fix = ('raise MMDUALVIT_DOWNLOAD_TIMEOUT (seconds), MMDUALVIT_DOWNLOAD_LIMIT_MB or lower '
           'MMDUALVIT_DOWNLOAD_MIN_RATE_KB if the file is really that slow or large, or download it yourself and give '
           'its path')
    expected_hash = _HASH_IN_NAME.search(os.path.basename(dest))
    sha256 = hashlib.sha256()
    start = last_report = time.monotonic()
    done = 0
    try:
        atomic_write(url.encode(), record)
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_open(dest) as out:
            length = response.headers.get('Content-Length', '').strip()
            declared = int(length) if length.isdigit() else -1  # absent or malformed: only the limit bounds it
            total = f' of {declared / 2**20:.1f}' if declared > 0 else ''
            if declared > limit:
                raise DownloadError(f'checkpoint {url!r} is {declared / 2**20:.0f} MiB, over the {limit_mb:g} MiB '
                                    f'limit; {fix}.')
            while True:
                chunk = response.read1(2**20)  # what has arrived: a slow server cannot hold a whole MiB read
                if not chunk:
                    break
                done += len(chunk)
                if done > limit:
                    raise DownloadError(f'checkpoint {url!r} sent more than the {limit_mb:g} MiB limit; {fix}.')
                out.write(chunk)
                sha256.update(chunk)
                now = time.monotonic()
                if now - start > timeout and done / (now - start) < min_rate_kb * 1024:
                    raise DownloadError(
                        f'checkpoint {url!r} arrives at {done / (now - start) / 1024:.1f} KiB/s ({done} bytes in '
                        f'{now - start:.0f} s), below the {min_rate_kb:g} KiB/s minimum; {fix}.')
                if now - last_report >= 30:
                    print_log(f'downloading {url}: {done / 2**20:.1f}{total} MiB ({done / (now - start) / 2**20:.2f} '
                              f'MiB/s)', logger='current')
                    last_report = now
            if declared > 0 and done != declared:
                raise DownloadError(f'checkpoint {url!r}: the server closed the connection after {done} of '
                                    f'{declared} bytes; nothing was kept. Try again, or download it yourself and give '
                                    f'its path.')
            if expected_hash and not sha256.hexdigest().startswith(expected_hash.group(1)):
                raise DownloadError(f'checkpoint {url!r} has SHA-256 {sha256.hexdigest()[:16]}..., not the '
                                    f'{expected_hash.group(1)} its name promises: the server sent another or a '
                                    f'damaged file, and nothing was kept. Check the URL, or try again.')
    except CheckpointError:
        raise
    except OSError as err:  # TimeoutError, and urllib's HTTPError and URLError (which wraps timeouts to connect)
        if isinstance(err, TimeoutError) or isinstance(getattr(err, 'reason', None), TimeoutError):
            raise DownloadError(f'checkpoint {url!r}: the server did not answer within {timeout:g} s; check the URL '
                                f'and your connection, or {fix}.') from None
        if err.errno in (errno.ENOSPC, errno.EDQUOT):  # the cache's disk, not the server
            full = 'disk full' if err.errno == errno.ENOSPC else 'disk quota exceeded'
            raise DownloadError(f'{full} while downloading {url!r} into {dest!r} (nothing was kept); free space '
                                f'there, or set TORCH_HOME to a larger disk.') from None
        raise DownloadError(f'checkpoint {url!r} could not be fetched ({type(err).__name__}: {_first_line(err)}); '
                            f'check the URL and your connection, or download the file and give its path.') from None
    print_log(f'downloaded {url} ({done / 2**20:.1f} MiB) to {dest}', logger='current')


def _read_local(path: str, name: str, trust: bool) -> dict:
    """Read local ``path``; messages name ``name`` (the URL of a fetched file)."""
    corrupt = f'checkpoint file {name!r} is truncated or corrupt ({{}}); download it again and compare its SHA-256.'
    if name.endswith('.safetensors') or _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            checkpoint = load_file(path, device='cpu')
        except OSError as err:
            _raise_read_failure(err, name, corrupt)
        except (SafetensorError, ValueError, RuntimeError) as err:
            raise DamagedCheckpointError(corrupt.format(_first_line(err))) from err
    else:
        _check_zip_records(path, name)
        try:
            # Besides tensors and containers, only the types of mmdualvit.safe_globals are allowed (the
            # argparse.Namespace that official Dual-ViT checkpoints pickle).
            checkpoint = torch.load(path, map_location='cpu', weights_only=not trust)
        except pickle.UnpicklingError as err:
            refused = None if trust else _refused_global(err)
            if refused is None:
                raise DamagedCheckpointError(corrupt.format(_unpickler_complaint(err))) from None
            raise CheckpointError(
                f'checkpoint file {name!r} needs {refused} to unpickle, which safe loading (weights_only=True) '
                f'refuses: unpickling it could run code. If you trust where the file comes from, convert it once with '
                f'`python tools/model_converters/dualvit2mmdualvit.py --trust-checkpoint SRC DST` (or '
                f'sequencer2mmdualvit.py) and use the tensors-only output, or pass --trust-checkpoint to '
                f'tools/train.py / tools/test.py.') from None
        except OSError as err:
            _raise_read_failure(err, name, corrupt)
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError, AttributeError,
                TypeError) as err:
            raise DamagedCheckpointError(corrupt.format(_first_line(err))) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'checkpoint file {name!r} holds a {type(checkpoint).__name__}, not a dict of tensors '
                              f'(a state_dict or a checkpoint holding one); it is not a model checkpoint.')
    _check_no_expanded_views(checkpoint, name)
    return checkpoint


def _is_safetensors(path: str) -> bool:
    """Whether ``path`` holds the safetensors format whatever its name: an 8-byte little-endian header length, then
    the JSON header. (A torch pickle starts with a zip signature or a pickle opcode, never with that.)"""
    try:
        with open(path, 'rb') as f:
            head = f.read(9)
        size = os.path.getsize(path)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b'{' and 0 < int.from_bytes(head[:8], 'little') <= size - 8


def _raise_read_failure(err: OSError, name: str, corrupt: str) -> None:
    """An error of the operating system (permissions, I/O, a network file system) says nothing about the bytes of
    the file: it is not reported as damage, which --resume would skip past."""
    if err.errno is None:
        raise DamagedCheckpointError(corrupt.format(_first_line(err))) from None
    raise CheckpointError(f'checkpoint file {name!r} could not be read ({err.strerror or err}); check its permissions '
                          f'and the file system, then try again.') from None


def _check_zip_records(path: str, name: str) -> None:
    """Refuse compressed records: torch never writes them, and a few MB of them can expand to gigabytes."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            packed = [info for info in archive.infolist() if info.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load reports the damage
    if packed:
        expanded = sum(info.file_size for info in packed)
        raise CheckpointError(f'checkpoint file {name!r} holds {len(packed)} compressed records that expand to '
                              f'{expanded / 2**20:.1f} MiB; torch.save never compresses, so the file was altered. '
                              f'Use the original file (compare its SHA-256).')


def _check_no_expanded_views(checkpoint: dict, name: str) -> None:
    """Refuse tensors that are views larger than their storage (stride 0): they expand when copied or saved."""
    for key, value in _tensors(checkpoint):
        if value.is_meta:
            raise CheckpointError(f'checkpoint file {name!r}: tensor {key!r} is a meta tensor (a shape without data);'
                                  f' the file holds no weights. Save the model after its weights were materialised.')
        if value.layout != torch.strided:
            raise CheckpointError(f'checkpoint file {name!r}: tensor {key!r} has layout {value.layout}; model '
                                  f'weights are dense tensors. Convert it with .to_dense() before saving.')
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise CheckpointError(
                f'checkpoint file {name!r}: tensor {key!r} {tuple(value.shape)} is a broadcast view of '
                f'{value.untyped_storage().nbytes()} stored bytes that would expand to '
                f'{value.numel() * value.element_size()} bytes; no trained model stores weights like that. Use the '
                f'original file (compare its SHA-256).')


def _tensors(obj, prefix: str = ''):
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f'{prefix}.{key}' if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f'{prefix}.{i}' if prefix else str(i))


def _refused_global(err: Exception) -> Optional[str]:
    """The global that weights_only refused, or None when the unpickler's complaint is about damaged bytes.

    torch >= 2.4 says "Unsupported global: GLOBAL x.y", older torch "Unsupported class x.y"; random bytes give
    "Unsupported operand 233" and the like instead.
    """
    for line in str(err).splitlines():
        for marker in ('Unsupported global: GLOBAL ', 'unsupported GLOBAL ', 'Unsupported class '):
            if marker in line:
                words = line.split(marker, 1)[1].split()
                if words:
                    return words[0].rstrip('.,:;')
    return None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _unpickler_complaint(err: Exception) -> str:
    # torch wraps the unpickler's complaint about damaged bytes in advice about weights_only that does not apply.
    skip = ('Weights only load failed', 'Please file an issue', 'Check the documentation', '(1)', '(2)')
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.strip().startswith(skip)]
    return lines[0] if lines else type(err).__name__


def extract_state_dict(checkpoint: dict, source: str = 'checkpoint') -> 'OrderedDict[str, torch.Tensor]':
    """Unwrap ``state_dict``/``model``/``module`` wrappers and ``module.`` prefixes; keep tensors only."""
    state, where = checkpoint, 'the top level'
    while isinstance(state, dict) and not _is_tensor_dict(state):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if wrapper is None:
            kinds = sorted({type(v).__name__ for v in state.values() if not torch.is_tensor(v)})
            raise CheckpointError(f'{source} holds no state_dict: {where} has keys {sorted(map(str, state))[:8]} '
                                  f'with values of type {kinds}; expected tensors, or one of {WRAPPER_KEYS} holding '
                                  f'them.')
        state, where = state[wrapper], repr(wrapper)
    if not isinstance(state, dict):
        raise CheckpointError(f'{source} holds a {type(state).__name__}, not a state_dict.')
    out = OrderedDict()
    for key, value in state.items():
        if torch.is_tensor(value):
            key = str(key)
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


def _listed(items: Sequence[str]) -> str:
    more = f' ... and {len(items) - _SHOWN} more' if len(items) > _SHOWN else ''
    return ', '.join(items[:_SHOWN]) + more


# ----------------------------------------------------------------------------------------------- comparing
def convert_for_model(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """``state`` with every submodule's ``convert_checkpoint`` applied to the keys under its prefix (outer first).

    The same conversions run again inside ``load_state_dict``; they are idempotent, so that pass changes nothing.
    """
    state = OrderedDict(state)
    for name, module in model.named_modules():
        convert = getattr(type(module), 'convert_checkpoint', None)
        if convert is None:
            continue
        prefix = f'{name}.' if name else ''
        own = OrderedDict((k[len(prefix):], state.pop(k)) for k in list(state) if k.startswith(prefix))
        state.update((prefix + k, v) for k, v in module.convert_checkpoint(own).items())
    return state


@dataclass
class WeightDiff:
    """How a state_dict differs from a model's (keys relative to the model)."""
    expected: int
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)  # key, checkpoint shape, model shape
    not_float: List[Tuple[str, torch.dtype]] = field(default_factory=list)  # where the model's tensor is floating
    not_finite: List[str] = field(default_factory=list)

    @property
    def bad_values(self) -> bool:
        return bool(self.not_float or self.not_finite)

    def values_report(self, source: str, override: str) -> str:
        """The error for weights that are not weights: non-floating dtypes and NaN/Inf values."""
        parts = []
        if self.not_float:
            shown = [f'{k} ({str(d).replace("torch.", "")})' for k, d in self.not_float]
            parts.append(f'{len(self.not_float)} tensors are not floating point where the model has floating '
                         f'parameters (e.g. {_listed(shown)})')
        if self.not_finite:
            parts.append(f'{len(self.not_finite)} tensors hold NaN or Inf (e.g. {_listed(self.not_finite)})')
        return (f'checkpoint {source!r} holds values that are not usable weights: {"; ".join(parts)}. Loading it '
                f'would cast or propagate them silently. It comes from a diverged or damaged run, or is not a model '
                f'checkpoint: use another file, or {override} to load it anyway.')


def _all_finite(tensor: torch.Tensor) -> bool:
    # torch has no isfinite for the 1-byte float8 types: check them as float32.
    return bool(torch.isfinite(tensor.float() if tensor.element_size() == 1 else tensor).all())


def compare_weights(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor],
                    check_values: bool = True) -> WeightDiff:
    """Compare a (converted) checkpoint ``state`` with a model's ``own`` state_dict: keys, shapes and, with
    ``check_values``, dtypes (floating where the model is) and finiteness. Reads nothing into the model."""
    diff = WeightDiff(expected=len(own))
    for key, mine in own.items():
        if key not in state:
            diff.missing.append(key)
            continue
        theirs = state[key]
        if theirs.shape != mine.shape:
            diff.mismatched.append((key, tuple(theirs.shape), tuple(mine.shape)))
        elif check_values and mine.is_floating_point():
            if not theirs.is_floating_point():
                diff.not_float.append((key, theirs.dtype))
            elif not _all_finite(theirs):
                diff.not_finite.append(key)
    diff.unexpected = [k for k in state if k not in own]
    return diff


# ----------------------------------------------------------------------------------------------- loading
def load_pretrained(model: torch.nn.Module, path: str, prefix: Optional[str] = None, logger: str = 'current',
                    check_weights: bool = True, trust: bool = False) -> dict:
    """Load an ImageNet (or detection/segmentation) checkpoint into a backbone ``model``, strictly.

    The model's ``convert_checkpoint`` maps the file's names first. Every parameter and buffer must then be found
    with the right shape (and, unless ``check_weights=False``, with finite floating values). Keys under the model's
    ``checkpoint_unused_prefixes()`` (classifier heads ...) are reported in one info line; anything else is an
    error naming the file and the fix, and the model is left untouched. ``trust`` as in :func:`read_checkpoint`.
    Returns a summary dict.
    """
    http = str(path).startswith(('http://', 'https://'))
    try:
        checkpoint = read_checkpoint(path, trust=trust)
    except MissingCheckpointError as err:
        raise MissingCheckpointError(
            f"{err} Download the official ImageNet weights (README, 'Checkpoints') and place them there, or point "
            f'the config at them with --cfg-options model.backbone.init_cfg.checkpoint=PATH '
            f'(model.backbone.init_cfg=None trains from scratch).') from None
    except DownloadError as err:
        cache = f'copy it to {download_cache_path(path)} (the download cache, read by every later run) or ' if http \
            else ''
        raise DownloadError(f'{err} Without internet here: download {path} on another machine, then {cache}give its '
                            f'path with --cfg-options model.backbone.init_cfg.checkpoint=PATH.') from None
    try:
        return _load_backbone_weights(model, checkpoint, path, prefix, logger, check_weights)
    except CheckpointError as err:
        if not http:
            raise
        raise type(err)(f'{err}{_cache_note(path)}') from None


def _converted_and_compared(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: str, check_weights: bool,
                            override: str) -> Tuple['OrderedDict[str, torch.Tensor]', 'WeightDiff']:
    """The loading core of both paths (``init_cfg`` and whole-model loads): ``state`` converted for ``model`` and
    compared with it; values that are not weights are refused here, first, in the same words on both paths
    (``override`` names the path's switch). Keys and shapes are worded by each path for its own fix."""
    state = convert_for_model(model, state)
    diff = compare_weights(model.state_dict(), state, check_weights)
    if diff.bad_values:
        raise CheckpointError(diff.values_report(source, override))
    return state, diff


def _load_backbone_weights(model: torch.nn.Module, checkpoint: dict, path: str, prefix: Optional[str], logger: str,
                           check_weights: bool) -> dict:
    state = extract_state_dict(checkpoint, repr(path))
    wanted = prefix or ''
    if not wanted and any(k.startswith('backbone.') for k in state):
        wanted = 'backbone.'  # a detector/segmentor/mmpretrain checkpoint: its backbone is what we want
        print_log(f'{path}: a whole-model checkpoint; loading its backbone.* weights.', logger=logger)
    if wanted:
        state = OrderedDict((k[len(wanted):], v) for k, v in state.items() if k.startswith(wanted))
        if not state:
            raise CheckpointError(f'checkpoint {path!r} has no keys under prefix {wanted!r}; remove `prefix` from '
                                  f'init_cfg or check the file.')
    state, diff = _converted_and_compared(model, state, path, check_weights,
                                          'set check_weights=False in the Pretrained init_cfg')
    name = type(model).__name__
    unused_prefixes = tuple(getattr(model, 'checkpoint_unused_prefixes', tuple)())
    expected_unused = [k for k in diff.unexpected if unused_prefixes and k.startswith(unused_prefixes)]
    surplus = [k for k in diff.unexpected if k not in expected_unused]

    if diff.mismatched:
        shown = '; '.join(f'{k}: checkpoint {a} vs model {b}' for k, a, b in diff.mismatched[:3])
        raise CheckpointError(
            f'checkpoint {path!r} does not fit this {name}: {len(diff.mismatched)} of {diff.expected} tensors have '
            f'other shapes (e.g. {shown}). It is probably another variant or architecture ({_looks_like(state)}); '
            f'use the checkpoint that matches the config\'s arch, or change `arch`.')
    if diff.missing:
        raise CheckpointError(
            f'checkpoint {path!r} lacks {len(diff.missing)} of {diff.expected} {name} parameters/buffers '
            f'(e.g. {", ".join(diff.missing[:3])}); loading it would leave them randomly initialised. The file looks '
            f'like {_looks_like(state)} with keys such as {", ".join(list(state)[:3])}. If it is a detector/'
            f"segmentor checkpoint, use `load_from` for the whole model or set init_cfg prefix='backbone.'; "
            f'otherwise convert it with tools/model_converters/.')
    if surplus:
        raise CheckpointError(
            f'checkpoint {path!r} holds {len(surplus)} tensors this {name} does not have (e.g. '
            f'{", ".join(surplus[:3])}); it is probably {_looks_like(state)} of another variant. Use the matching '
            f'checkpoint, or convert it with tools/model_converters/.')
    model.load_state_dict(OrderedDict((k, state[k]) for k in model.state_dict()), strict=True)
    message = f'Loaded {diff.expected} tensors into {name} from {path}: all backbone weights found.'
    if expected_unused:
        message += f' Unused (expected, classifier-only): {_group(expected_unused, unused_prefixes)}.'
    print_log(message, logger=logger)
    return dict(loaded=diff.expected, unused=expected_unused)


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: dict, filename: str, strict: bool = True,
                            revise_keys: Sequence[Tuple[str, str]] = ((r'^module\.', ''), ),
                            check_weights: bool = True, logger=None) -> None:
    """Load a whole-model checkpoint (``load_from``, ``--resume``, ``tools/test.py``) into ``model``.

    Any missing, unexpected or mis-shaped tensor is a :class:`CheckpointError` when ``strict`` (a warning otherwise,
    and the matching tensors load); values that are not weights (see :class:`WeightDiff`) are an error unless
    ``check_weights=False``. The model's own conversions apply first, so only real mismatches count. BatchNorm's
    ``num_batches_tracked`` counters are not required (older mmengine/mmcv files lack them).

    mmengine's ``load_state_dict`` is not used: it reports mismatches only as text after loading, while the
    comparison here happens before anything is copied into the model.
    """
    state = extract_state_dict(checkpoint, repr(filename))
    for pattern, replacement in revise_keys:
        state = OrderedDict((re.sub(pattern, replacement, k), v) for k, v in state.items())
    state, diff = _converted_and_compared(model, state, filename, check_weights,
                                          'pass --skip-weight-check (--cfg-options check_weights=False)')
    own = model.state_dict()
    diff.missing = [k for k in diff.missing if not k.endswith('num_batches_tracked')]
    lines = []
    for title, items in (('missing in the file', diff.missing), ('unexpected in the file', diff.unexpected),
                         ('shape differs (file vs model)',
                          [f'{k}: {torch.Size(a)} vs {torch.Size(b)}' for k, a, b in diff.mismatched])):
        if items:
            lines.append(f'  {len(items)} {title}: {_listed(items)}')
    if lines:
        report = f'checkpoint {filename!r} does not match the model:\n' + '\n'.join(lines)
        if strict:
            raise CheckpointError(report + '\nIf a partial load is what you want (e.g. fine-tuning from another '
                                  'head), pass --allow-partial-load or --cfg-options strict_load=False.')
        if logger is not None:
            logger.warning(report + '\n(strict_load=False: loading the rest.)')
    shapes_differ = {k for k, _, _ in diff.mismatched}
    model.load_state_dict(OrderedDict((k, v) for k, v in state.items() if k in own and k not in shapes_differ),
                          strict=False)


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
        load_pretrained(model, entry['checkpoint'], prefix=entry.get('prefix'),
                        check_weights=entry.get('check_weights', True))
    model._is_init = True


# ----------------------------------------------------------------------------------------------- converter files
def convert_checkpoint_file(src: str, dst: str, model_cls: type, trust: bool = False,
                            check_weights: bool = True) -> dict:
    """Read ``src``, convert it with ``model_cls.convert_checkpoint`` and write a tensors-only file to ``dst``.

    The file is refused unless ``model_cls.is_own_checkpoint`` accepts the converted names (a converter for one
    architecture does not write another's file), and, unless ``check_weights=False``, when a tensor is neither
    floating point nor BatchNorm's ``num_batches_tracked`` counter, or holds NaN/Inf. ``dst`` is checked before
    ``src`` is read, and appears complete or not at all. Returns a summary: keys kept/dropped, parameter count and
    the SHA-256 of the written file.
    """
    _check_output_path(src, dst)
    raw = read_checkpoint(src, trust=trust)
    storages = [v.untyped_storage() for _, v in _tensors(raw)]
    total = len(storages)
    stored = sum({s.data_ptr(): s.nbytes() for s in storages}.values())
    state = model_cls.convert_checkpoint(extract_state_dict(raw, repr(src)))
    if not model_cls.is_own_checkpoint(state):
        raise CheckpointError(f'{src!r} is not a {model_cls.__name__} checkpoint: it looks like '
                              f'{_looks_like(state)} (keys such as {", ".join(list(state)[:3])}). Use the converter '
                              f'of that architecture in tools/model_converters/.')
    if check_weights:
        diff = WeightDiff(expected=len(state))
        diff.not_float = [(k, v.dtype) for k, v in state.items()
                          if not v.is_floating_point() and not k.endswith('num_batches_tracked')]
        diff.not_finite = [k for k, v in state.items() if v.is_floating_point() and not _all_finite(v)]
        if diff.bad_values:
            raise CheckpointError(diff.values_report(src, 'pass --skip-weight-check'))
    written = sum(v.numel() * v.element_size() for v in state.values())
    if written > stored:  # each tensor is saved with a storage of its own
        raise CheckpointError(
            f'{src!r} stores {stored / 2**20:.1f} MiB of tensor data, but its tensors share storage so that the '
            f'converted file would hold {written / 2**20:.1f} MiB: no trained model stores its weights like that. '
            f'Use the original file (compare its SHA-256).')
    state = OrderedDict((k, v.detach().clone().contiguous()) for k, v in state.items())
    try:
        with atomic_open(dst) as f:  # never a half-written file under the final name
            torch.save(state, f)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise CheckpointError(f'disk full while writing {dst!r} (nothing was written); free space there or choose '
                                  f'another output path.') from None
        raise CheckpointError(f'cannot write {dst!r} ({err.strerror or err}); choose a writable output path.') \
            from None
    with open(dst, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    params = sum(v.numel() for v in state.values() if v.is_floating_point())
    return dict(kept=len(state), dropped=total - len(state), params=params, sha256=digest, dst=dst)


def _check_output_path(src: str, dst: str) -> None:
    if not dst or dst.endswith(os.sep):
        raise CheckpointError(f'output path {dst!r} names no file; give a file name such as checkpoints/model.pth.')
    if os.path.isdir(dst):
        raise CheckpointError(f'output path {dst!r} is a directory; give a file name inside it '
                              f'(e.g. {os.path.join(dst, "model.pth")!r}).')
    if '://' not in src and os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise CheckpointError(f'output {dst!r} is the input file; write the converted checkpoint to another path '
                              f'(the original is needed to convert again).')
    reason = unwritable_reason(os.path.dirname(os.path.abspath(dst)))
    if reason:
        raise CheckpointError(f'cannot write {dst!r}: {reason}; choose another output path.')


def converter_cli(model_cls: type, description: str, argv=None) -> dict:
    """Command line of the ``tools/model_converters`` scripts: ``SRC DST [--trust-checkpoint]``; prints a summary."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('src', help='official or timm checkpoint (.pth, .pth.tar, .safetensors), path or URL')
    parser.add_argument('dst', help='output: a tensors-only state_dict that loads with weights_only=True')
    parser.add_argument('--trust-checkpoint', '--trust-pickle', dest='trust', action='store_true',
                        help='read SRC with weights_only=False (only for a file whose origin you trust)')
    parser.add_argument('--skip-weight-check', action='store_true',
                        help='write the file even if tensors are not floating point or hold NaN/Inf')
    args = parser.parse_args(argv)
    try:
        summary = convert_checkpoint_file(args.src, args.dst, model_cls, trust=args.trust,
                                          check_weights=not args.skip_weight_check)
    except CheckpointError as err:
        parser.exit(2, f'error: {err}\n')
    print(f"wrote {summary['dst']}: kept {summary['kept']} tensors, dropped {summary['dropped']} "
          f"(optimizer/scaler state and other non-model entries), {summary['params'] / 1e6:.2f}M parameters, "
          f"sha256 {summary['sha256']}")
    return summary
