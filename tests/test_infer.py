"""tools/infer.py on a real photograph (matplotlib's sample data): the written files, and the refusals."""
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import mmdualvit  # noqa: F401  (registers our backbones)
from tests.utils import REPO, load_module

PHOTO = Path(matplotlib.get_data_path()) / 'sample_data' / 'grace_hopper.jpg'  # 512 x 600, RGB
TOY_DET = REPO / 'configs' / 'toy' / 'maskrcnn_dualvit_toy.py'
TOY_SEG = REPO / 'configs' / 'toy' / 'upernet_dualvit_toy.py'

infer = load_module(REPO / 'tools' / 'infer.py', 'mmdualvit_tools_infer')


def run_infer(*args):
    return subprocess.run([sys.executable, str(REPO / 'tools' / 'infer.py'), *map(str, args)], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONWARNINGS='ignore'), timeout=600)


def rigged_checkpoint(config, path, classifier, label):
    """The config's model as built, saved with ``torch.save(state_dict)``, except that ``classifier`` (a linear or
    1x1 conv layer) now scores class ``label`` far above all others: every prediction of a model that really loaded
    this file says ``label``."""
    init_default_scope(Config.fromfile(config).default_scope)
    model = MODELS.build(Config.fromfile(config).model)
    state = model.state_dict()
    state[f'{classifier}.weight'].zero_()
    bias = state[f'{classifier}.bias']
    bias.fill_(-10.)
    bias[label] = 10.
    torch.save(state, path)
    return path


@pytest.mark.slow
def test_detection_on_a_photograph_with_a_checkpoint(tmp_path):
    checkpoint = rigged_checkpoint(TOY_DET, tmp_path / 'det.pth', 'roi_head.bbox_head.fc_cls', label=2)
    proc = run_infer(PHOTO, TOY_DET, checkpoint, '--out-dir', tmp_path / 'out', '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'random' not in (proc.stdout + proc.stderr).lower()
    picture = mmcv.imread(tmp_path / 'out' / 'vis' / 'grace_hopper.jpg')
    assert picture.shape == (600, 512, 3)
    result = json.loads((tmp_path / 'out' / 'preds' / 'grace_hopper.json').read_text())
    assert set(result) == {'labels', 'scores', 'bboxes', 'masks'}
    boxes = np.array(result['bboxes'])
    assert len(result['labels']) == len(result['scores']) == len(result['masks']) == len(boxes) > 0
    assert boxes.shape[1] == 4 and (boxes[:, 2:] >= boxes[:, :2]).all()
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 512 and boxes[:, [1, 3]].max() <= 600
    assert set(result['labels']) == {2} and min(result['scores']) > 0.99  # the rigged classifier was loaded
    assert all(mask['size'] == [600, 512] for mask in result['masks'])  # COCO RLE, image-sized


@pytest.mark.slow
def test_segmentation_on_a_photograph_with_a_checkpoint(tmp_path):
    checkpoint = rigged_checkpoint(TOY_SEG, tmp_path / 'seg.pth', 'decode_head.conv_seg', label=3)
    proc = run_infer(PHOTO, TOY_SEG, checkpoint, '--out-dir', tmp_path / 'out', '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr[-3000:]
    photo, picture = mmcv.imread(PHOTO), mmcv.imread(tmp_path / 'out' / 'vis' / 'grace_hopper.jpg')
    assert picture.shape == photo.shape == (600, 512, 3)
    prediction = mmcv.imread(tmp_path / 'out' / 'pred' / '00000000_pred.png', flag='unchanged')
    assert prediction.shape == (600, 512) and (prediction == 3).all()  # class 3 everywhere: the file was loaded
    # The picture blends class 3's colour (the config's palette: blue) over the photograph.
    assert np.abs(picture.astype(int) - photo).mean() > 10


@pytest.mark.slow
def test_random_weights_only_when_asked_and_said_loudly(tmp_path):
    proc = run_infer(PHOTO, TOY_SEG, '--random-weights', '--out-dir', tmp_path, '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'WARNING: --random-weights: the model is UNTRAINED, its predictions are random noise' in proc.stderr
    assert (tmp_path / 'vis' / 'grace_hopper.jpg').is_file() and (tmp_path / 'pred' / '00000000_pred.png').is_file()


def refusal(capsys, *argv):
    with pytest.raises(SystemExit) as stop:
        infer.main([str(arg) for arg in argv])
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_missing_and_unreadable_images_are_refused(tmp_path, capsys):
    err = refusal(capsys, tmp_path / 'nope.jpg', TOY_DET, '--random-weights')
    assert f"error: image file '{tmp_path / 'nope.jpg'}' does not exist" in err
    (tmp_path / 'notes.jpg').write_text('not a picture')
    err = refusal(capsys, tmp_path / 'notes.jpg', TOY_DET, '--random-weights')
    assert f"error: cannot read '{tmp_path / 'notes.jpg'}' as an image: give a JPEG, PNG, BMP or TIFF file" in err
    (tmp_path / 'empty.png').write_bytes(b'')
    assert 'as an image' in refusal(capsys, tmp_path / 'empty.png', TOY_DET, '--random-weights')


def test_configs_of_other_tasks_are_refused(tmp_path, capsys):
    err = refusal(capsys, PHOTO, REPO / 'configs' / 'imagenet_dualvit_s.py', tmp_path / 'x.pth')
    assert ('imagenet_dualvit_s.py is a config for mmpretrain (default_scope); tools/infer.py runs detection (mmdet) '
            "and segmentation (mmseg) configs. For an ImageNet classifier use mmpretrain's "
            'ImageClassificationInferencer') in err
    assert "config file 'nope.py' does not exist" in refusal(capsys, PHOTO, 'nope.py', '--random-weights')


def test_no_checkpoint_is_refused_without_random_weights(capsys):
    err = refusal(capsys, PHOTO, TOY_SEG)
    assert 'error: no CHECKPOINT given. Without trained weights the model predicts noise' in err
    assert '--random-weights to run the untrained model anyway' in err
    assert 'not both' in refusal(capsys, PHOTO, TOY_SEG, 'x.pth', '--random-weights')


def test_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    other = rigged_checkpoint(TOY_SEG, tmp_path / 'seg.pth', 'decode_head.conv_seg', label=0)
    err = refusal(capsys, PHOTO, TOY_DET, other, '--device', 'cpu')
    assert f"checkpoint '{other}' does not match the model" in err and 'missing in the file: ' in err
    assert 'pass --allow-partial-load' in err
    err = refusal(capsys, PHOTO, TOY_DET, tmp_path / 'absent.pth', '--device', 'cpu')
    assert f"checkpoint file '{tmp_path / 'absent.pth'}' does not exist" in err


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_class_names_come_from_the_checkpoint_else_from_the_config(scope):
    """A checkpoint tools/train.py wrote carries the dataset's classes (meta.dataset_meta); a bare state_dict does
    not, and the config's test dataset supplies them (not mmdet's COCO / mmseg's Cityscapes defaults)."""
    from types import SimpleNamespace
    cfg = Config.fromfile(TOY_DET if scope == 'mmdet' else TOY_SEG)
    init_default_scope(scope)
    seen = {}
    visualizer = SimpleNamespace(set_dataset_meta=lambda classes, palette: seen.update(classes=classes))
    inferencer = SimpleNamespace(model=torch.nn.Linear(2, 2), visualizer=visualizer)
    state = inferencer.model.state_dict()
    infer.load_weights(inferencer, cfg, {'state_dict': state}, 'bare.pth', strict=True)
    toy = ('square', 'circle', 'triangle') if scope == 'mmdet' else ('background', 'square', 'circle', 'triangle')
    assert tuple(inferencer.model.dataset_meta['classes']) == toy
    trained = {'state_dict': state, 'meta': {'dataset_meta': {'classes': ('cat', 'dog'), 'palette': [[1, 2, 3]] * 2}}}
    infer.load_weights(inferencer, cfg, trained, 'trained.pth', strict=True)
    assert inferencer.model.dataset_meta['classes'] == ('cat', 'dog')
    shown = seen['classes'] if scope == 'mmseg' else visualizer.dataset_meta['classes']
    assert shown == ('cat', 'dog')
    # mmdet 2.x / mmseg 0.x files (the authors' trained models): meta.CLASSES and meta.PALETTE
    legacy = {'state_dict': state, 'meta': {'CLASSES': ['ant', 'bee'], 'PALETTE': [[4, 5, 6]] * 2, 'epoch': 12}}
    infer.load_weights(inferencer, cfg, legacy, 'mmdet2.pth', strict=True)
    assert inferencer.model.dataset_meta['classes'] == ('ant', 'bee')
    assert inferencer.model.dataset_meta['palette'] == [[4, 5, 6]] * 2


@pytest.mark.parametrize('config, first, count', [('maskrcnn_dualvit_s_coco.py', 'person', 80),
                                                  ('upernet_dualvit_s_ade20k.py', 'wall', 150)])
def test_class_names_come_from_the_dataset_type_of_our_configs(config, first, count):
    """Our COCO / ADE20K configs name no classes themselves: the dataset type's (CocoDataset, ADE20KDataset) are
    used, as mmdet's init_detector does (it refused: 'no class names in the config')."""
    cfg = Config.fromfile(REPO / 'configs' / config)
    meta = infer.config_dataset_meta(cfg)
    assert len(meta['classes']) == count and meta['classes'][0] == first


def test_images_above_the_pixel_limit_are_refused_before_decoding(tmp_path, capsys):
    """A PNG header that promises 30000 x 30000 pixels (2.5 GiB decoded) is refused from its header alone; the limit
    is --max-pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    header = struct.pack('>IIBBBBB', 30000, 30000, 8, 2, 0, 0, 0)  # 8-bit RGB
    bomb = tmp_path / 'huge.png'
    bomb.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IEND', b''))
    err = refusal(capsys, bomb, TOY_DET, '--random-weights')
    assert (f"error: '{bomb}' is 30000x30000 pixels (900 megapixels), over the --max-pixels limit of 50 megapixels: "
            'decoding it alone takes 2.5 GiB. Downscale the image, or raise --max-pixels') in err
    err = refusal(capsys, PHOTO, TOY_DET, '--random-weights', '--max-pixels', '1e5')
    assert 'is 512x600 pixels (0.307 megapixels), over the --max-pixels limit of 0.1 megapixels' in err


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_work(capsys):
    err = refusal(capsys, PHOTO, TOY_DET, '--random-weights', '--out-dir', '/dev/null/outputs')
    assert ("error: --out-dir '/dev/null/outputs' cannot hold the results: '/dev/null' is a file, not a directory; "
            'choose another folder') in err
