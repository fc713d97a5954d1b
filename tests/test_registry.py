"""Registration: one mmdualvit registry node under mmengine's root, imported without mmdet/mmseg/mmpretrain.

Building both backbones through mmdet's, mmseg's and mmpretrain's registries is tested in
tests/test_models/test_backbones/test_contract.py; from a config's custom_imports in a fresh process, by
tests/test_configs.py (mmdet, mmseg) and tests/test_models/test_classifiers.py (mmpretrain, through tools/test.py).
"""
import subprocess
import sys

import numpy as np
import pytest

from tests.utils import REPO


@pytest.mark.install
def test_import_does_not_pull_in_mmdet_or_mmseg():
    code = ('import sys, mmdualvit; print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("mmdet", "mmseg", "mmpretrain")))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'


def test_one_registry_node_under_mmengine_root():
    import mmengine.registry as root

    from mmdualvit.registry import HOOKS, MODELS
    assert MODELS.scope == 'mmdualvit' and MODELS.parent is root.MODELS
    assert root.MODELS.children['mmdualvit'] is MODELS
    assert HOOKS.parent is root.HOOKS
    assert MODELS.get('DualViT').__name__ == 'DualViT' and MODELS.get('Sequencer2D').__name__ == 'Sequencer2D'


def pins() -> dict:
    """The lock `make` installed with on this Python (tools/install/lib.sh, default_constraints)."""
    lock = 'constraints-py310.txt' if sys.version_info[:2] == (3, 10) else 'constraints.txt'
    lines = (REPO / 'requirements' / lock).read_text().splitlines()
    return dict(line.split('==', 1) for line in lines if '==' in line and not line.startswith('#'))


def test_stack_runs_on_numpy_2():
    """The pinned stack is used with numpy 2 (mmcv image ops and pycocotools included). Environments with another
    torch (tools/install/old_torch_env.sh: torch < 2.3 was built against numpy 1) run the same ops on numpy 1."""
    import mmcv
    import torch
    from pycocotools import mask as mask_utils

    from mmdualvit.deps import installed
    locked = pins()
    # installed by `make` with the lock (not, e.g., dev/fork_env.sh's OneDL stack on the same torch)
    if torch.__version__.split('+')[0] == locked['torch'] and installed('mmcv') == {'mmcv': locked['mmcv']}:
        assert np.__version__ == locked['numpy']
        assert int(np.__version__.split('.')[0]) >= 2
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert mmcv.imresize(image, (15, 10)).shape == (10, 15, 3)
    rle = mask_utils.encode(np.asfortranarray(np.ones((4, 5), dtype=np.uint8)))
    assert mask_utils.area(rle) == 20
