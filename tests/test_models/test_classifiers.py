"""ImageNet classifiers (mmpretrain): official checkpoints load as-is and reproduce the official logits."""
import argparse
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from tests.utils import REPO, assert_matches, official_dualvit_file, reference_features, reference_input

MODELS = ['dualvit_s', 'dualvit_b', 'dualvit_l', 'sequencer2d_s', 'sequencer2d_m', 'sequencer2d_l']


def build_classifier(name):
    cfg = Config.fromfile(str(REPO / 'configs' / f'imagenet_{name}.py'))
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    return PRETRAIN_MODELS.build(cfg.model)


@pytest.mark.parametrize('name', MODELS)
def test_official_checkpoint_gives_official_logits(name, reference_weights):
    model = build_classifier(name)
    model.load_state_dict(reference_weights(name), strict=True)  # official names, converted on load
    model.eval()
    x = reference_input('cls224_logits')
    with torch.no_grad():
        logits = model(x, mode='tensor')
    assert logits.shape == (2, 1000)
    assert_matches(logits, reference_features(name)['cls224_logits'], f'{name} logits')


def test_logits_check_can_fail(reference_weights):
    model = build_classifier('sequencer2d_s')
    model.load_state_dict(reference_weights('sequencer2d_s'), strict=True)
    for module in model.modules():  # every LayerNorm eps 1e-6 -> 1e-5: a slip the reference check must catch
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-5
    model.eval()
    with torch.no_grad():
        logits = model(reference_input('cls224_logits'), mode='tensor')
    with pytest.raises(AssertionError):
        assert_matches(logits, reference_features('sequencer2d_s')['cls224_logits'], 'eps slip')


@pytest.mark.slow
def test_tools_test_reports_top1_for_official_dualvit_file(tmp_path, reference_weights):
    """tools/test.py CONFIG official-checkpoint-309.pth.tar -> top-1 on an ImageNet-layout folder."""
    import cv2
    (tmp_path / 'val').mkdir()
    (tmp_path / 'meta').mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        cv2.imwrite(str(tmp_path / 'val' / f'{i}.png'), rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
        lines.append(f'{i}.png {i}')
    (tmp_path / 'meta' / 'val.txt').write_text('\n'.join(lines) + '\n')
    checkpoint = official_dualvit_file(tmp_path / 'checkpoint-309.pth.tar', {
        'epoch': 309, 'state_dict': reference_weights('dualvit_s'), 'version': 2,
        'args': argparse.Namespace(model='dualvit_s'), 'metric': 84.1})
    proc = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'test.py'), str(REPO / 'configs' / 'imagenet_dualvit_s.py'),
         str(checkpoint), '--work-dir', str(tmp_path / 'work'), '--cfg-options',
         f'test_dataloader.dataset.data_root={tmp_path}', 'test_dataloader.batch_size=2',
         'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False'],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert re.search(r'accuracy/top1: [0-9.]+', log)
    assert 'missing keys' not in log and 'unexpected key' not in log
