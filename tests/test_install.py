"""The installer's pieces that decide which mmcv build fits (tools/install/lib.sh, check_env.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / 'tools' / 'install' / 'lib.sh'


def _bash(script, **env):
    return subprocess.run(['bash', '-c', f'set -euo pipefail; . "{LIB}"; {script}'], capture_output=True, text=True,
                          env=dict(os.environ, **env))


def test_build_key_names_interpreter_torch_and_flavour():
    proc = _bash(f'mmcv_build_facts "{sys.executable}"', FORCE_CUDA='0')
    assert proc.returncode == 0, proc.stderr
    tag, version, flavour, cuda, cxx20 = proc.stdout.split()
    assert tag == f'cp{sys.version_info.major}{sys.version_info.minor}'
    assert version == torch.__version__
    assert flavour == ('cu' + torch.version.cuda.replace('.', '') if torch.cuda.is_available() else 'cpu')
    assert cuda == (torch.version.cuda or 'none')
    # torch >= 2.10 needs C++20 for its headers; older torch builds with mmcv's own -std=c++17.
    assert cxx20 == str(int(tuple(map(int, torch.__version__.split('.')[:2])) >= (2, 10)))


def test_force_cuda_selects_the_cuda_flavour():
    proc = _bash(f'mmcv_build_facts "{sys.executable}"', FORCE_CUDA='1')
    if torch.version.cuda is None:
        assert proc.returncode != 0 and 'CPU-only build' in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[2] == 'cu' + torch.version.cuda.replace('.', '')


@pytest.mark.parametrize('version, pins, ok', [('3.10', 'default', False), ('3.11', 'default', True),
                                              ('3.12', 'default', True), ('3.10', 'own', True)])
def test_python_310_is_refused_only_for_the_default_pins(version, pins, ok):
    constraints = ROOT / 'requirements' / 'constraints.txt' if pins == 'default' else '/elsewhere/constraints.txt'
    proc = _bash(f'require_python_for_pins {version} "{constraints}" "{ROOT}"; echo installing')
    assert (proc.returncode == 0 and proc.stdout == 'installing\n') == ok, proc.stderr
    if not ok:
        assert 'cuda-bindings==13.5.0 has no Python 3.10 release' in proc.stderr
        assert 'PYTHON=python3.12 make install' in proc.stderr and 'installing' not in proc.stdout


@pytest.mark.parametrize('tag, builds', [('cp310', True), ('cp312', True), ('cp313', False), ('cp314', False)])
def test_no_mmcv_compile_where_its_setup_py_cannot_run(tag, builds, tmp_path):
    proc = _bash(f'require_mmcv_buildable {tag} "{tmp_path}"; echo compiling')
    if builds:
        assert proc.returncode == 0 and proc.stdout == 'compiling\n', proc.stderr
    else:
        assert proc.returncode != 0 and 'compiling' not in proc.stdout
        assert "KeyError: '__version__'" in proc.stderr and 'PYTHON=python3.12 make install' in proc.stderr
        assert f'mmcv-2.1.0-{tag}-{tag}-*.whl' in proc.stderr and str(tmp_path) in proc.stderr


def test_compiler_wrappers_raise_the_standard(tmp_path):
    proc = _bash(f'use_cxx20_wrappers "{tmp_path}" /bin/echo; '
                 '"$PYTORCH_NVCC" -c a.cu -std=c++17 -Xcompiler -std=c++14 "-DX=a b"; echo "$CXX"')
    assert proc.returncode == 0, proc.stderr
    nvcc_args, cxx = proc.stdout.splitlines()
    assert nvcc_args == '-c a.cu -std=c++20 -Xcompiler -std=c++20 -DX=a b'
    assert (tmp_path / 'cxx').read_text().rstrip().endswith('"$@" -std=gnu++20') and cxx == str(tmp_path / 'cxx')


@pytest.mark.parametrize('flavour', ['cu999', 'cpu'])
def test_check_env_accepts_only_the_flavour_mmcv_was_built_for(flavour):
    from mmcv.ops import get_compiling_cuda_version
    built = get_compiling_cuda_version()
    built = 'cpu' if built == 'not available' else 'cu' + built.replace('.', '')
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'install' / 'check_env.py'), '--ops-only',
                           '--flavour', flavour], capture_output=True, text=True)
    if flavour == built:
        assert proc.returncode == 0 and 'ok: mmcv ops' in proc.stdout, proc.stderr
    else:
        assert proc.returncode == 1
        assert f'mmcv._ext was built for {built}, this environment needs {flavour}' in proc.stderr


def test_install_requires_are_ranges_that_admit_older_stacks():
    """`pip install -e .` into an existing torch 2.0/2.1 + mmcv 2.0/2.1 environment must keep what is there."""
    from packaging.requirements import Requirement
    captured = {}
    import setuptools
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        import runpy
        runpy.run_path(str(ROOT / 'setup.py'), run_name='setup')
    finally:
        setuptools.setup = original
    requirements = {Requirement(line).name: Requirement(line).specifier for line in captured['install_requires']}
    assert not [str(s) for s in requirements.values() if '==' in str(s)], 'exact pins belong in constraints.txt'
    for name, old, pinned in [('torch', '2.0.1', '2.14.1'), ('mmcv', '2.0.1', '2.1.0'), ('mmengine', '0.8.4', '0.10.7'),
                              ('mmdet', '3.0.0', '3.3.0'), ('mmsegmentation', '1.0.0', '1.2.2'),
                              ('mmpretrain', '1.0.0', '1.2.0')]:
        assert old in requirements[name] and pinned in requirements[name], (name, requirements[name])
    assert '2.2.0' not in requirements['mmcv']  # mmdet 3.3 / mmseg 1.2 refuse mmcv 2.2 at import
