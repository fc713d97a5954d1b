"""Which torch / OpenMMLab releases mmdualvit works with, checked when the package is imported.

``pip install mmdualvit`` does not install torch or the OpenMMLab packages (see ``setup.py``): an environment
usually has them already, built for its CUDA, and under one of two sets of distribution names: upstream OpenMMLab
(``mmcv``, ``mmdet`` ...) or the maintained OneDL forks (``onedl-mmcv``, ``onedl-mmdetection`` ...), which install
the same import names. So pip cannot see whether they are present, and this module checks instead, by distribution
metadata only (nothing is imported):

- a package ``import mmdualvit`` needs (torch, mmengine, mmcv) that no distribution provides: ``ModuleNotFoundError``
  naming it, the supported releases and the install command;
- a release outside the supported ranges, or the same import name installed under both distribution names (their
  files overwrite each other): a :class:`DependencyWarning` naming the package, the ranges and the fix. A warning,
  not an error, so a newer release can still be tried.

mmdet, mmseg and mmpretrain are optional here (each is needed only by its own task's configs) and only checked
when installed. ``requirements/mminstall.txt`` and ``requirements/mminstall-onedl.txt`` hold the same ranges for
pip and mim (tests/test_install.py keeps them equal to :data:`SUPPORTED`).
"""
import importlib.machinery
import sys
import warnings
from importlib import metadata

from packaging.specifiers import SpecifierSet

UPSTREAM, ONEDL = 'OpenMMLab', 'OneDL fork'

# import name -> {distribution name: (stack, supported releases)}
SUPPORTED = {
    'torch': {'torch': (None, '>=2.0')},
    'mmengine': {'mmengine': (UPSTREAM, '>=0.8,<1.0'), 'onedl-mmengine': (ONEDL, '>=0.10.8,<1.0')},
    # mmdet 3.3, mmseg 1.2 and mmpretrain 1.2 refuse mmcv >= 2.2 at import; onedl-mmpretrain refuses >= 2.4.
    'mmcv': {'mmcv': (UPSTREAM, '>=2.0.0,<2.2.0'), 'onedl-mmcv': (ONEDL, '>=2.3.0,<2.4.0')},
    'mmdet': {'mmdet': (UPSTREAM, '>=3.0,<3.4'), 'onedl-mmdetection': (ONEDL, '>=3.5,<3.6')},
    'mmseg': {'mmsegmentation': (UPSTREAM, '>=1.0,<1.3'), 'onedl-mmsegmentation': (ONEDL, '>=1.4,<1.5')},
    'mmpretrain': {'mmpretrain': (UPSTREAM, '>=1.0,<1.3'), 'onedl-mmpretrain': (ONEDL, '>=1.3,<1.4')},
}
REQUIRED = ('torch', 'mmengine', 'mmcv')  # `import mmdualvit` imports these


class DependencyWarning(UserWarning):
    """An installed torch / OpenMMLab release that mmdualvit does not support (or two packages sharing files)."""


def _choices(module):
    return ' or '.join(f'{dist}{spec}' + (f' ({stack})' if stack else '')
                       for dist, (stack, spec) in SUPPORTED[module].items())


def _install_command(module, dist=None, spec=None):
    if module == 'torch':
        return ('install torch first (the build for your CUDA: https://pytorch.org/get-started/locally/), '
                'then pip install "mmdualvit[openmmlab]"')
    if dist is None:  # mmcv is a source package: it must be built against the installed torch (README "Install")
        return ('pip install "setuptools<82" wheel ninja, then pip install --no-build-isolation '
                '"mmdualvit[openmmlab]" (OpenMMLab; README "Install" also shows the OneDL forks)')
    # mmcv's ops are compiled against the installed torch, which pip's isolated build would not see.
    return f'pip install {"--no-build-isolation " if module == "mmcv" else ""}"{dist}{spec}"'


def _version(distribution):
    """``distribution.version``, read from the metadata's header lines only (``.version`` parses the whole file,
    long description included: ~5 ms per package, most of the check's cost)."""
    text = distribution.read_text('METADATA') or distribution.read_text('PKG-INFO') or ''
    for line in text.split('\n\n', 1)[0].splitlines():
        if line.startswith('Version:'):
            return line.partition(':')[2].strip()
    return distribution.version


def installed(module, path=None):
    """The distributions providing import name ``module``: ``{distribution name: version}``.

    ``path`` (default ``sys.path``) is where to look, as for :func:`importlib.metadata.distributions`.
    """
    found = {}
    for dist in SUPPORTED[module]:
        for distribution in metadata.distributions(name=dist, path=sys.path if path is None else path):
            found[dist] = _version(distribution)
            break  # the first on the path is the one imported
    return found


def problems(path=None):
    """Check the installed stack; return ``(missing, notes)``.

    ``missing`` maps each required import name that no distribution provides (and that is not importable as a
    plain module either, e.g. a source checkout on ``PYTHONPATH``) to its message; ``notes`` lists the messages
    for releases outside the supported ranges and for import names installed twice.
    """
    missing, notes = {}, []
    for module in SUPPORTED:
        found = installed(module, path)
        if not found:
            if module in REQUIRED and importlib.machinery.PathFinder.find_spec(module, path) is None:
                missing[module] = (f'mmdualvit needs {module}, which is not installed. Supported: '
                                   f'{_choices(module)}. Fix: {_install_command(module)}.')
        elif len(found) > 1:
            names = ' and '.join(f'{dist} {version}' for dist, version in found.items())
            notes.append(f"{names} are both installed and overwrite each other's `{module}` files. Fix: keep "
                         f'one: pip uninstall -y {" ".join(found)}, then reinstall the one you use '
                         f'({_choices(module)}).')
        else:
            (dist, version), = found.items()
            spec = SUPPORTED[module][dist][1]
            if not SpecifierSet(spec).contains(version, prereleases=True):
                notes.append(f'{dist} {version} is installed, but mmdualvit supports {_choices(module)}. '
                             f'Fix: {_install_command(module, dist, spec)}.')
    return missing, notes


def check_stack(path=None):
    """Raise ``ModuleNotFoundError`` for a missing required package; warn about unsupported releases."""
    missing, notes = problems(path)
    if missing:
        raise ModuleNotFoundError('\n'.join(missing.values()), name=next(iter(missing)))
    for note in notes:
        warnings.warn(note, DependencyWarning, stacklevel=2)


def alias_fork_config_scopes(table=None, path=None):
    """Let ``_base_ = 'mmseg::...'`` resolve where only the OneDL fork provides ``mmseg``; return the scopes changed.

    mmengine maps a config scope to a distribution name (``mmengine.config.utils.MODULE2PACKAGE``: ``'mmseg'`` ->
    ``'mmsegmentation'``) and looks it up by that name, falling back to the import name only when the name is not
    importable. The forks install ``mmseg`` as ``onedl-mmsegmentation``, so onedl-mmengine 0.10.12 stops with
    "mmsegmentation is not installed" (``mmdet::`` and ``mmpretrain::`` work: there the two names agree). Where the
    upstream distribution is absent and another supported one provides the module, the scope is mapped to the import
    name, which mmengine then finds on ``sys.path``. Our tools import mmdualvit before reading a config; mmseg's own
    tools need ``import mmdualvit`` first (docs/install.md).
    """
    if table is None:
        from mmengine.config.utils import MODULE2PACKAGE as table
    changed = []
    for scope, package in table.items():
        if scope in SUPPORTED and package != scope and package in SUPPORTED[scope]:
            found = installed(scope, path)
            if found and package not in found:
                table[scope] = scope
                changed.append(scope)
    return changed


check_stack()
alias_fork_config_scopes()
