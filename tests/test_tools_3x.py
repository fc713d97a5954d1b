"""The other 3x detection systems train and test through tools/ on the toy COCO set (toy variants of the real
Cascade Mask R-CNN and Sparse R-CNN configs; slow: about a minute each on 2 CPU cores)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmdualvit.datasets import make_toy_coco

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_tool(args, cwd):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


@pytest.mark.parametrize('system,metrics', [('cascade_mask_rcnn', ('bbox', 'segm')), ('sparse_rcnn', ('bbox', ))])
def test_toy_3x_system_trains_and_tests_through_tools(tmp_path, system, metrics):
    make_toy_coco(tmp_path / 'data' / 'toy_coco', num_train=8, num_val=4, image_size=(96, 96), seed=1)
    config = REPO / 'configs' / 'toy' / f'{system}_dualvit_toy.py'
    log = run_tool([str(REPO / 'tools' / 'train.py'), str(config), '--work-dir', 'work', '--cfg-options',
                    'train_cfg.max_iters=4', 'train_cfg.val_interval=1000', 'default_hooks.logger.interval=1',
                    'default_hooks.checkpoint.interval=4', 'train_dataloader.batch_size=2'], cwd=tmp_path)
    losses = [float(x) for x in re.findall(r'Iter\(train\) \[\s*\d+/4\].*?\bloss: ([0-9.]+)', log)]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses))), log[-3000:]
    checkpoint = torch.load(tmp_path / 'work' / 'iter_4.pth', map_location='cpu', weights_only=True)
    assert checkpoint['meta']['iter'] == 4 and any(k.startswith('backbone.') for k in checkpoint['state_dict'])
    log = run_tool([str(REPO / 'tools' / 'test.py'), str(config), 'work/iter_4.pth', '--work-dir', 'test'],
                   cwd=tmp_path)
    for metric in metrics:  # four iterations from scratch may detect nothing yet: either way it is evaluated
        assert re.search(rf'coco/{metric}_mAP: -?[0-9.]+', log) or 'results of the whole dataset is empty' in log
