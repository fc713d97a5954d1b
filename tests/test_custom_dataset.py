"""docs/custom_dataset.md: its two configs, exactly as printed there, train and evaluate through tools/train.py on a
generated dataset with two classes (a count none of our configs uses), starting from ImageNet weights in the
official format; a head left at another class count stops the run, naming the head and the setting."""
import os
import re
import sys

import pytest
import torch
from mmengine.config import Config

from mmdualvit.checkpoint import download_cache_path
from mmdualvit.datasets.toy import make_toy_ade, make_toy_coco
from tests.utils import REPO, run_tool

DOC = REPO / 'docs' / 'custom_dataset.md'
CLASSES = ('circle', 'triangle')
DETECTION = 'my_configs/maskrcnn_dualvit_s_shapes.py'
SEGMENTATION = 'my_configs/upernet_sequencer2d_s_shapes.py'


def documented_configs() -> dict:
    """``{path: text}`` of the python blocks that docs/custom_dataset.md marks ``<!-- tested: path -->``."""
    return dict(re.findall(r'<!-- tested: (\S+) -->\n```python\n(.*?)```', DOC.read_text(), re.S))


def user_project(root, name: str):
    """A user's project in ``root``: our ``configs/`` beside ``my_configs/`` with the documented file, and the
    dataset it reads generated with two classes (two images per split). Returns the config path."""
    (root / 'configs').symlink_to(REPO / 'configs')
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(documented_configs()[name])
    if name == DETECTION:
        make_toy_coco(root / 'data' / 'shapes', num_train=2, num_val=2, classes=CLASSES)
    else:
        make_toy_ade(root / 'data' / 'shapes_seg', num_train=2, num_val=2, classes=CLASSES)
    return path


def test_the_doc_marks_both_configs():
    assert sorted(documented_configs()) == sorted([DETECTION, SEGMENTATION])


@pytest.mark.parametrize('name,head,count', [(DETECTION, 'roi_head.mask_head', 80),
                                             (SEGMENTATION, 'auxiliary_head', 150)])
def test_a_head_with_another_class_count_stops_the_run_before_any_weights(tmp_path, monkeypatch, name, head, count):
    from mmdualvit.datasets.class_counts import ClassCountError
    from mmdualvit.engine import StrictRunner
    config = user_project(tmp_path, name)
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'absent.pth')  # reading weights would fail differently
    runner = StrictRunner.from_cfg(cfg)
    runner.build_train_loop(runner._train_loop)  # as documented: every head matches the dataset
    runner.build_val_loop(runner._val_loop)

    cfg.merge_from_dict({f'model.{head}.num_classes': count})  # the base's value, as if this head were forgotten
    cfg.work_dir = str(tmp_path / 'work2')
    setting = re.escape(f'model.{head}.num_classes={count}')
    with pytest.raises(ClassCountError, match=rf"^train_dataloader\.dataset names \d classes \(.*circle, triangle\) "
                                              rf"but {setting} \(\w+Head\): .*Set num_classes=\d in each"):
        StrictRunner.from_cfg(cfg).train()


@pytest.mark.slow
@pytest.mark.parametrize('name', [DETECTION, SEGMENTATION])
def test_the_documented_config_trains_and_evaluates(tmp_path, reference_weights, name):
    """``python tools/train.py my_configs/...`` with the documented file, a shortened schedule and two images per
    split: the ImageNet weights load (Dual-ViT's from checkpoints/, Sequencer2D's from the download cache, as a
    second run after its first download would find them), and the evaluation scores the two classes."""
    config = user_project(tmp_path, name)
    if name == DETECTION:
        (tmp_path / 'checkpoints').mkdir()
        torch.save(reference_weights('dualvit_s'), tmp_path / 'checkpoints' / 'dualvit_s.pth')
        schedule = ['train_cfg.max_epochs=1', 'train_dataloader.batch_size=1']
        loaded, scores = 'into DualViT from checkpoints/dualvit_s.pth', r'coco/segm_mAP: -?\d'
    else:
        cache = download_cache_path(Config.fromfile(str(config)).model.backbone.init_cfg.checkpoint)
        os.makedirs(os.path.dirname(cache))
        torch.save(reference_weights('sequencer2d_s'), cache)
        schedule = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2']  # batch 2: UperNet's pooling BN needs 2
        loaded, scores = 'into Sequencer2D from https://github.com/okojoalg/sequencer', r'mIoU: \d'
    # No checkpoint: what is tested is training and evaluating, and a full-size one with its optimizer state is
    # half a GB of disk per run.
    no_checkpoint = ['default_hooks.checkpoint.interval=100', 'default_hooks.checkpoint.save_last=False']
    proc = run_tool([sys.executable, REPO / 'tools' / 'train.py', config, '--work-dir', tmp_path / 'work',
                     '--cfg-options', *schedule, *no_checkpoint], tmp_path)
    assert loaded in proc.stdout and re.search(scores, proc.stdout), proc.stdout[-3000:]
    assert not list((tmp_path / 'work').glob('*.pth'))
