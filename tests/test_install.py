"""Packaging and installer: what pip installs into an existing environment, the import-time check of the stack
(mmdualvit/deps.py), and the installer's pieces that pick the lock and the mmcv build (tools/install)."""
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from mmdualvit.deps import ONEDL, SUPPORTED, UPSTREAM
from tests.utils import REPO

LIB = REPO / 'tools' / 'install' / 'lib.sh'


def _bash(script, **env):
    return subprocess.run(['bash', '-c', f'set -euo pipefail; . "{LIB}"; {script}'], capture_output=True, text=True,
                          env=dict(os.environ, **env))


@pytest.mark.install
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


@pytest.mark.install
def test_force_cuda_selects_the_cuda_flavour():
    proc = _bash(f'mmcv_build_facts "{sys.executable}"', FORCE_CUDA='1')
    if torch.version.cuda is None:
        assert proc.returncode != 0 and 'CPU-only build' in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[2] == 'cu' + torch.version.cuda.replace('.', '')


@pytest.mark.parametrize('version, lock', [('3.10', 'constraints-py310.txt'), ('3.11', 'constraints.txt'),
                                           ('3.12', 'constraints.txt'), ('3.13', 'constraints.txt'),
                                           ('3.9', None), ('3.14', None)])
@pytest.mark.install
def test_each_supported_python_gets_a_lock_and_others_are_refused(version, lock):
    """3.10 has its own lock (several pins of constraints.txt have no 3.10 release); 3.13 gets constraints.txt and is
    stopped later, before compiling mmcv (test_no_mmcv_compile_where_its_setup_py_cannot_run); 3.9 and 3.14 stop
    before anything is installed."""
    proc = _bash(f'default_constraints {version} "{REPO}"; echo installing')
    if lock:
        assert proc.returncode == 0 and proc.stdout == f'{REPO}/requirements/{lock}\ninstalling\n', proc.stderr
    else:
        assert proc.returncode != 0 and 'installing' not in proc.stdout
        assert f'Python {version} is not supported: use Python 3.10, 3.11 or 3.12' in proc.stderr
        assert 'PYTHON=python3.12 make install' in proc.stderr


def _locked(name):
    lines = (REPO / 'requirements' / name).read_text().splitlines()
    return dict(line.split('==', 1) for line in lines if '==' in line and not line.startswith('#'))


def test_python_310_lock_keeps_the_stack_and_pins_everything():
    """The 3.10 lock differs from constraints.txt only where 3.10 has no release of a pin; torch and OpenMMLab are
    the same, and it pins the same packages (plus pytest's tomli and exceptiongroup, which 3.10 needs, and
    coloredlogs and humanfriendly, which onnxruntime's last 3.10 release needs)."""
    main, py310 = _locked('constraints.txt'), _locked('constraints-py310.txt')
    for name in ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain',
                 'opencv-python', 'setuptools', 'wheel', 'pytest', 'onnx'):
        assert py310[name] == main[name], name
    assert py310['numpy'].startswith('2.2.') and main['numpy'].startswith('2.4.')
    assert py310['onnxruntime'] == '1.23.2'
    assert set(py310) - set(main) == {'tomli', 'exceptiongroup', 'coloredlogs', 'humanfriendly'}
    assert set(main) - set(py310) == {'lazy-importer'}  # not pulled in on 3.10


@pytest.mark.parametrize('tag, builds', [('cp310', True), ('cp312', True), ('cp313', False), ('cp314', False)])
@pytest.mark.install
def test_no_mmcv_compile_where_its_setup_py_cannot_run(tag, builds, tmp_path):
    proc = _bash(f'require_mmcv_buildable {tag} "{tmp_path}"; echo compiling')
    if builds:
        assert proc.returncode == 0 and proc.stdout == 'compiling\n', proc.stderr
    else:
        assert proc.returncode != 0 and 'compiling' not in proc.stdout
        assert "KeyError: '__version__'" in proc.stderr and 'PYTHON=python3.12 make install' in proc.stderr
        assert f'mmcv-2.1.0-{tag}-{tag}-*.whl' in proc.stderr and str(tmp_path) in proc.stderr
        assert 'use Python 3.10, 3.11 or 3.12' in proc.stderr
        assert 'PYTHON=python3.13 make fork-env' in proc.stderr


@pytest.mark.install
def test_compiler_wrappers_raise_the_standard(tmp_path):
    proc = _bash(f'use_cxx20_wrappers "{tmp_path}" /bin/echo; '
                 '"$PYTORCH_NVCC" -c a.cu -std=c++17 -Xcompiler -std=c++14 "-DX=a b"; echo "$CXX"')
    assert proc.returncode == 0, proc.stderr
    nvcc_args, cxx = proc.stdout.splitlines()
    assert nvcc_args == '-c a.cu -std=c++20 -Xcompiler -std=c++20 -DX=a b'
    assert (tmp_path / 'cxx').read_text().rstrip().endswith('"$@" -std=gnu++20') and cxx == str(tmp_path / 'cxx')


@pytest.mark.parametrize('flavour', ['cu999', 'cpu'])
@pytest.mark.install
def test_check_env_accepts_only_the_flavour_mmcv_was_built_for(flavour):
    from mmcv.ops import get_compiling_cuda_version
    built = get_compiling_cuda_version()
    built = 'cpu' if built == 'not available' else 'cu' + built.replace('.', '')
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'install' / 'check_env.py'), '--ops-only',
                           '--flavour', flavour], capture_output=True, text=True)
    if flavour == built:
        assert proc.returncode == 0 and 'ok: mmcv ops' in proc.stdout, proc.stderr
    else:
        assert proc.returncode == 1
        assert f'mmcv._ext was built for {built}, this environment needs {flavour}' in proc.stderr


def _setup_kwargs():
    captured = {}
    import setuptools
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        runpy.run_path(str(REPO / 'setup.py'), run_name='setup')
    finally:
        setuptools.setup = original
    return captured


STACK = ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain')


def test_install_requires_leave_torch_and_openmmlab_to_the_environment():
    """A fork environment has mmcv, mmdet ... under other distribution names (onedl-mmcv ...): naming mmcv in
    install_requires would make pip install upstream mmcv over it. opencv-python likewise (headless builds)."""
    names = {Requirement(line).name.lower() for line in _setup_kwargs()['install_requires']}
    assert not names & {*STACK, 'opencv-python', 'pycocotools'}, names


def test_openmmlab_extra_ranges_admit_older_stacks():
    """`pip install "mmdualvit[openmmlab]"` into an existing torch 2.0/2.1 + mmcv 2.0/2.1 environment keeps what is
    there (ranges, not pins)."""
    requirements = {Requirement(line).name: Requirement(line).specifier
                    for line in _setup_kwargs()['extras_require']['openmmlab']}
    assert not [str(s) for s in requirements.values() if '==' in str(s)], 'exact pins belong in constraints.txt'
    for name, old, pinned in [('torch', '2.0.1', '2.14.1'), ('mmcv', '2.0.1', '2.1.0'), ('mmengine', '0.8.4', '0.10.7'),
                              ('mmdet', '3.0.0', '3.3.0'), ('mmsegmentation', '1.0.0', '1.2.2'),
                              ('mmpretrain', '1.0.0', '1.2.0')]:
        assert old in requirements[name] and pinned in requirements[name], (name, requirements[name])
    assert '2.2.0' not in requirements['mmcv']  # mmdet 3.3 / mmseg 1.2 refuse mmcv 2.2 at import
    assert set(requirements) == set(STACK)


@pytest.mark.parametrize('stack, name', [(UPSTREAM, 'mminstall.txt'), (ONEDL, 'mminstall-onedl.txt')])
def test_mminstall_files_hold_the_ranges_checked_at_import(stack, name):
    lines = [ln for ln in (REPO / 'requirements' / name).read_text().splitlines() if ln and not ln.startswith('#')]
    in_file = {Requirement(line).name: str(Requirement(line).specifier) for line in lines}
    checked = {dist: str(SpecifierSet(spec)) for dists in SUPPORTED.values()
               for dist, (of, spec) in dists.items() if of == stack}
    assert in_file == checked and len(checked) == 5


# Distributions of a OneDL-fork environment and of an upstream one, as (name, version); the runtime requirements of
# mmdualvit are installed in both, so that a correct install adds mmdualvit alone.
RUNTIME = [('numpy', '2.2.6'), ('packaging', '26.3'), ('psutil', '7.2.2'), ('ftfy', '6.3.1'), ('regex', '2026.9.29'),
           ('safetensors', '0.8.0'), ('filelock', '3.13.1')]
FORK_ENV = [('torch', '2.10.0'), ('torchvision', '0.25.0'), ('onedl-mmengine', '0.10.12'), ('onedl-mmcv', '2.3.6'),
            ('onedl-mmdetection', '3.5.1'), ('onedl-mmsegmentation', '1.4.2'), ('onedl-mmpretrain', '1.3.6')]
UPSTREAM_ENV = [('torch', '2.1.2'), ('torchvision', '0.16.2'), ('mmengine', '0.10.7'), ('mmcv', '2.1.0'),
                ('mmdet', '3.3.0'), ('mmsegmentation', '1.2.2'), ('mmpretrain', '1.2.0')]


def fake_distributions(site, dists):
    """Write metadata-only distributions (``name-version.dist-info``) into folder ``site``."""
    for name, version in dists:
        info = Path(site) / f'{name.replace("-", "_")}-{version}.dist-info'
        info.mkdir(parents=True)
        (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nfake\n')
        (info / 'INSTALLER').write_text('pip\n')
        (info / 'RECORD').write_text('')


@pytest.fixture(scope='module')
def mmdualvit_wheel(tmp_path_factory):
    """A wheel of this checkout, built from a copy (a build in place would leave build/ in the worktree)."""
    src, out = tmp_path_factory.mktemp('src'), tmp_path_factory.mktemp('wheel')
    for name in ('setup.py', 'README.md'):
        shutil.copy(REPO / name, src)
    for name in ('requirements', 'mmdualvit'):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns('__pycache__'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '--no-index',
                    '-w', str(out), str(src)], check=True, env=_isolated_pip_env(), capture_output=True)
    wheel, = out.glob('mmdualvit-*.whl')
    return wheel


def _isolated_pip_env():
    """Our environment without pip settings (this machine's pip.conf adds indexes, find-links and constraints) and
    without PYTHONPATH (a checkout on it, with an egg-info of an editable install, would count as installed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('PIP_') and k != 'PYTHONPATH'}
    return dict(env, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK='1')


@pytest.mark.parametrize('env', ['onedl', 'upstream'])
@pytest.mark.install
def test_pip_install_into_an_openmmlab_environment_adds_only_mmdualvit(env, mmdualvit_wheel, tmp_path):
    """pip resolves `pip install mmdualvit` against a scratch venv holding the fork's (or upstream's) distributions
    and our runtime requirements: it installs mmdualvit and nothing else (no index: it could not fetch anything)."""
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    site, = venv.glob('lib/python3.*/site-packages')
    fake_distributions(site, RUNTIME + (FORK_ENV if env == 'onedl' else UPSTREAM_ENV))
    report = tmp_path / 'report.json'
    proc = subprocess.run([sys.executable, '-m', 'pip', '--python', str(venv / 'bin' / 'python'), 'install',
                           '--dry-run', '--no-index', '--find-links', str(mmdualvit_wheel.parent), '--report',
                           str(report), 'mmdualvit'], capture_output=True, text=True, env=_isolated_pip_env())
    assert proc.returncode == 0, proc.stderr
    installs = [item['metadata']['name'] for item in json.loads(report.read_text())['install']]
    assert installs == ['mmdualvit'], installs
    # The same environment without the OpenMMLab packages: the extra asks for exactly them (upstream names).
    proc = subprocess.run([sys.executable, '-m', 'pip', '--python', str(venv / 'bin' / 'python'), 'install',
                           '--dry-run', '--no-index', '--find-links', str(mmdualvit_wheel.parent),
                           'mmdualvit[openmmlab]'], capture_output=True, text=True, env=_isolated_pip_env())
    if env == 'onedl':  # the index is off: pip stops at the first upstream name it looks for (which one depends on
        # pip's release: mmengine with pip 23-26 on 3.11, mmdet on 3.10's), never at a fork's
        assert proc.returncode != 0 and re.search(
            r'No matching distribution found for (mmengine|mmcv|mmdet|mmsegmentation|mmpretrain)\b', proc.stderr), \
            proc.stderr
    else:
        assert proc.returncode == 0 and 'Would install mmdualvit-' in proc.stdout, proc.stderr


def _site_with(tmp_path, dists, modules=()):
    site = tmp_path / 'site'
    fake_distributions(site, dists)
    for module in modules:  # importable without metadata, as a source checkout on PYTHONPATH is
        (site / module).mkdir()
        (site / module / '__init__.py').write_text('')
    return [str(site)]


def test_import_check_accepts_both_supported_stacks(tmp_path):
    from mmdualvit.deps import problems
    assert problems(_site_with(tmp_path / 'fork', FORK_ENV)) == ({}, [])
    assert problems(_site_with(tmp_path / 'upstream', UPSTREAM_ENV)) == ({}, [])


def test_mmseg_config_scope_resolves_with_the_fork(tmp_path):
    """onedl-mmengine looks `mmseg::` up as the distribution `mmsegmentation`; with the fork it gets the import name."""
    from mmdualvit.deps import alias_fork_config_scopes
    table = {'mmseg': 'mmsegmentation', 'mmdet': 'mmdet', 'mmpretrain': 'mmpretrain', 'mmaction': 'mmaction2'}
    assert alias_fork_config_scopes(table, _site_with(tmp_path / 'fork', FORK_ENV)) == ['mmseg']
    assert table == {'mmseg': 'mmseg', 'mmdet': 'mmdet', 'mmpretrain': 'mmpretrain', 'mmaction': 'mmaction2'}
    table = {'mmseg': 'mmsegmentation'}
    assert alias_fork_config_scopes(table, _site_with(tmp_path / 'upstream', UPSTREAM_ENV)) == []
    assert alias_fork_config_scopes(table, [str(tmp_path / 'empty')]) == [] and table == {'mmseg': 'mmsegmentation'}
    # importing mmdualvit applied it to mmengine's table: changed only where the fork alone provides mmseg
    from mmengine.config.utils import MODULE2PACKAGE

    from mmdualvit.deps import installed
    assert MODULE2PACKAGE['mmseg'] == ('mmseg' if set(installed('mmseg')) == {'onedl-mmsegmentation'}
                                       else 'mmsegmentation')


def test_import_check_names_a_missing_package_and_the_fix(tmp_path):
    from mmdualvit.deps import check_stack, problems
    path = _site_with(tmp_path, [('torch', '2.1.2'), ('mmengine', '0.10.7')])
    missing, notes = problems(path)
    assert notes == [] and list(missing) == ['mmcv']
    assert missing['mmcv'] == ('mmdualvit needs mmcv, which is not installed. Supported: mmcv>=2.0.0,<2.2.0 '
                               '(OpenMMLab) or onedl-mmcv>=2.3.0,<2.4.0 (OneDL fork). Fix: pip install '
                               '"setuptools<82" wheel ninja, then pip install --no-build-isolation '
                               '"mmdualvit[openmmlab]" (OpenMMLab; README "Install" also shows the OneDL forks).')
    with pytest.raises(ModuleNotFoundError) as error:
        check_stack(path)
    assert error.value.name == 'mmcv' and str(error.value) == missing['mmcv']
    # mmdet, mmseg and mmpretrain are optional; a module without metadata (a checkout on PYTHONPATH) is not missing.
    assert problems(_site_with(tmp_path / 'src', [('torch', '2.1.2'), ('mmengine', '0.10.7')], ['mmcv'])) == ({}, [])
    missing, _ = problems([str(tmp_path / 'empty')])
    assert list(missing) == ['torch', 'mmengine', 'mmcv'] and 'https://pytorch.org' in missing['torch']


def test_import_check_warns_about_releases_outside_the_ranges(tmp_path):
    from mmdualvit.deps import problems
    env = [d for d in FORK_ENV if d[0] != 'onedl-mmcv'] + [('onedl-mmcv', '2.4.0'), ('mmdet', '3.3.0')]
    missing, notes = problems(_site_with(tmp_path, env))
    assert missing == {} and notes == [
        'onedl-mmcv 2.4.0 is installed, but mmdualvit supports mmcv>=2.0.0,<2.2.0 (OpenMMLab) or '
        'onedl-mmcv>=2.3.0,<2.4.0 (OneDL fork). Fix: pip install --no-build-isolation "onedl-mmcv>=2.3.0,<2.4.0".',
        "mmdet 3.3.0 and onedl-mmdetection 3.5.1 are both installed and overwrite each other's `mmdet` files. Fix: "
        'keep one: pip uninstall -y mmdet onedl-mmdetection, then reinstall the one you use (mmdet>=3.0,<3.4 '
        '(OpenMMLab) or onedl-mmdetection>=3.5,<3.6 (OneDL fork)).']


@pytest.mark.install
def test_import_of_mmdualvit_warns_with_fake_metadata(tmp_path):
    """The check runs when mmdualvit is imported: metadata saying mmcv 2.2.0 (onedl-mmcv 2.4.0 in a fork
    environment) ahead of the real one on sys.path."""
    from mmdualvit.deps import installed
    dist, version, spec = (('onedl-mmcv', '2.4.0', '>=2.3.0,<2.4.0') if 'onedl-mmcv' in installed('mmcv')
                           else ('mmcv', '2.2.0', '>=2.0.0,<2.2.0'))
    fake_distributions(tmp_path, [(dist, version)])
    proc = subprocess.run([sys.executable, '-c', 'import mmdualvit'], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=f'{tmp_path}:{REPO}'))
    assert proc.returncode == 0, proc.stderr
    assert (f'DependencyWarning: {dist} {version} is installed, but mmdualvit supports mmcv>=2.0.0,<2.2.0 '
            '(OpenMMLab) or onedl-mmcv>=2.3.0,<2.4.0 (OneDL fork). Fix: pip install --no-build-isolation '
            f'"{dist}{spec}".') in proc.stderr
