"""Helpers shared by the tests: official key lists, reference inputs/outputs and the reference tolerance check of
tests/data (the reference weights themselves come from the session fixture ``reference_weights`` in conftest.py)."""
import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / 'tests' / 'data'


def load_module(path: Path, name: str):
    """The Python file ``path`` (a tool's script, a data generator ...) imported as module ``name``, e.g. to call a
    tool's ``main(argv)`` in this process."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_refweights = load_module(DATA_DIR / 'refweights.py', 'mmdualvit_tests_refweights')
make_input = _refweights.make_input
make_state_dict = _refweights.make_state_dict

# Stored inputs: npz prefix -> (shape, seed)
INPUTS = {
    'in160x256': ((1, 3, 160, 256), 0),
    'in224x224': ((1, 3, 224, 224), 1),
    'in196x252': ((1, 3, 196, 252), 0),
    'cls224_logits': ((2, 3, 224, 224), 2),  # input of the classifiers' logits
}

# Tolerance of the reference data: per array, with s = ref.std()
MAX_TOL = 2e-5
MEAN_TOL = 1.5e-6


def official_keys(model_name: str) -> dict:
    """``{key: [shape, dtype]}`` of the official classification checkpoint of ``model_name`` (e.g. 'dualvit_s')."""
    return dict(_official_keys(model_name))


@functools.lru_cache(maxsize=None)
def _official_keys(model_name):
    with open(DATA_DIR / f'{model_name}_imagenet_keys.json') as f:
        return json.load(f)


def load_reference_weights(model: torch.nn.Module, state_dict: dict) -> torch.nn.Module:
    """Load ``state_dict`` (the ``reference_weights`` fixture's) restricted to the model's keys, strictly (no
    missing key allowed)."""
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=True)
    return model


@functools.lru_cache(maxsize=None)
def _reference_features(model_name):
    with np.load(DATA_DIR / f'{model_name}_features.npz') as npz:
        return {k: npz[k] for k in npz.files}


def reference_features(model_name: str) -> dict:
    return dict(_reference_features(model_name))


def stored_inputs(model_name: str) -> list:
    """Names (npz prefixes) of the inputs whose stage outputs are stored for ``model_name``."""
    feats = _reference_features(model_name)
    return [name for name in INPUTS if f'{name}_out0' in feats]


def reference_input(name: str) -> torch.Tensor:
    shape, seed = INPUTS[name]
    return make_input(shape, seed)


def match_stats(out, ref) -> tuple:
    """(max|Δ|/s, mean|Δ|/s) with s = ref.std()."""
    if torch.is_tensor(out):
        out = out.detach().cpu().numpy()
    ref = np.asarray(ref)
    assert out.shape == ref.shape, f'shape {out.shape} != reference shape {ref.shape}'
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    scale = float(ref.std())
    return float(diff.max()) / scale, float(diff.mean()) / scale


def matches(out, ref) -> bool:
    max_rel, mean_rel = match_stats(out, ref)
    return max_rel <= MAX_TOL and mean_rel <= MEAN_TOL


def assert_matches(out, ref, name: str = '') -> None:
    max_rel, mean_rel = match_stats(out, ref)
    assert max_rel <= MAX_TOL and mean_rel <= MEAN_TOL, (
        f'{name}: max|d|/s = {max_rel:.3g} (limit {MAX_TOL:g}), mean|d|/s = {mean_rel:.3g} (limit {MEAN_TOL:g})')


def grads_and_outputs(model: torch.nn.Module, x: torch.Tensor):
    """Forward ``x``, backprop a fixed random projection of all outputs, return (outputs, {name: grad})."""
    model.zero_grad(set_to_none=True)
    outs = model(x)
    gen = torch.Generator().manual_seed(123)
    loss = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads


# torch >= 2.4 can allow-list argparse.Namespace, which the official Dual-ViT .pth.tar files pickle; older torch cannot.
NAMESPACE_ALLOWED = hasattr(torch.serialization, 'add_safe_globals')


def official_dualvit_file(path: Path, checkpoint: dict) -> Path:
    """Save ``checkpoint`` as the authors' Dual-ViT ``.pth.tar`` (with its pickled ``argparse.Namespace``) at
    ``path`` and return the file a user then loads: the file itself, or on torch < 2.4 (README: "Old torch") the
    output of the one-off conversion with ``--trust-checkpoint`` (here through its alias ``--trust-pickle``; the
    converter's command line, called in-process), after checking that the file is refused with that advice."""
    import pytest

    from mmdualvit.checkpoint import CheckpointError, converter_cli, read_checkpoint
    from mmdualvit.models import DualViT
    torch.save(checkpoint, path)
    if NAMESPACE_ALLOWED:
        return path
    with pytest.raises(CheckpointError, match=r'needs argparse\.Namespace to unpickle.*--trust-checkpoint'):
        read_checkpoint(str(path))
    converted = path.with_name(path.name + '.converted.pth')
    converter_cli(DualViT, 'convert', ['--trust-pickle', str(path), str(converted)])
    return converted


def free_port() -> int:
    """A local port no other process listens on now (a fixed one clashes with a concurrent suite's run)."""
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def lock_can_be_taken(work_dir: Path) -> bool:
    """Whether another holder could take the training lock of ``work_dir`` (mmdualvit.fileio.lock_work_dir) now."""
    import filelock

    from mmdualvit.fileio import LOCK_NAME
    lock = filelock.FileLock(str(Path(work_dir) / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return False
    lock.release()
    return True


def tool_env(**extra) -> dict:
    """The environment of a Python the tests start: this checkout first on PYTHONPATH, Python's warnings off,
    ``extra`` variables added."""
    import os
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))
    return dict(os.environ, PYTHONWARNINGS='ignore', PYTHONPATH=pythonpath, **extra)


def run_tool(args, cwd, *, env=None, timeout=900, check=True):
    """Run the command line ``args`` (e.g. ``[sys.executable, REPO / 'tools/train.py', ...]``) in ``cwd`` as a user
    would, with this checkout first on PYTHONPATH and Python's warnings off; ``env`` adds variables.

    Returns the ``subprocess.CompletedProcess``, stdout and stderr together in ``.stdout``. With ``check`` (the
    default) a non-zero exit status fails the test, showing the output's end; running past ``timeout`` seconds fails
    it in any case."""
    import subprocess
    try:
        proc = subprocess.run([str(arg) for arg in args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, env=tool_env(**(env or {})))
    except subprocess.TimeoutExpired:
        import pytest
        pytest.fail(f'{args[1] if len(args) > 1 else args[0]} did not finish within {timeout} s')
    if check:
        assert proc.returncode == 0, f'exit status {proc.returncode}: {args}\n{proc.stdout[-4000:]}'
    return proc


def fast_train_options(max_iters: int, checkpoint_interval=None) -> list:
    """``--cfg-options`` words of a short toy training run: ``max_iters`` iterations of 2 images, a log line each,
    no validation, a checkpoint every ``checkpoint_interval`` iterations (default: at the end)."""
    return [f'train_cfg.max_iters={max_iters}', 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
            'train_dataloader.batch_size=2', 'default_hooks.logger.interval=1',
            f'default_hooks.checkpoint.interval={checkpoint_interval or max_iters}']
