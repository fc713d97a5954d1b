"""Annotation faults that leave nothing to train on are errors naming the file; dropped annotations are counted.

Fast: the training set of the toy Mask R-CNN config (``mmdualvit.CheckedCocoDataset``) is built directly on edited
copies of a toy annotation file. The end-to-end run through tools/train.py is in test_training_faults.py.
"""
import copy
import json
import re
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmdualvit  # noqa: F401  (registry nodes)
from mmdualvit.datasets import make_toy_coco
from tests.utils import REPO

TOY_DET = REPO / 'configs' / 'toy' / 'maskrcnn_dualvit_toy.py'
NAN = float('nan')


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('faults') / 'toy_coco'
    info = make_toy_coco(root, num_train=6, num_val=1, image_size=(64, 64), seed=3)
    return root, json.loads(Path(info['train']['ann_file']).read_text())


@pytest.fixture
def warnings(monkeypatch):
    said = []
    monkeypatch.setattr('mmdualvit.datasets.checks.print_log', lambda message, **kwargs: said.append(message))
    return said


def build(root: Path, annotations, path: Path, test_mode: bool = False):
    """The toy config's training set on ``annotations`` (a dict written as JSON, or raw bytes) at ``path``."""
    path.write_bytes(annotations if isinstance(annotations, bytes) else json.dumps(annotations).encode())
    dataset = copy.deepcopy(Config.fromfile(TOY_DET).train_dataloader.dataset)
    dataset.update(data_root=str(root), ann_file=str(path), test_mode=test_mode)
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS
    return DATASETS.build(dataset)


def edited(coco: dict, change, which=None) -> dict:
    """A copy of ``coco`` with ``change(annotation)`` applied to every annotation (or those at indices ``which``)."""
    coco = copy.deepcopy(coco)
    for index, ann in enumerate(coco['annotations']):
        if which is None or index in which:
            change(ann)
    return coco


def instances(dataset) -> int:
    return sum(len(dataset.get_data_info(i)['instances']) for i in range(len(dataset)))


def test_the_toy_set_loads_whole_and_silently(toy, tmp_path, warnings):
    root, coco = toy
    dataset = build(root, coco, tmp_path / 'train.json')
    assert type(dataset).__name__ == 'CheckedCocoDataset'
    assert len(dataset) == 6 and instances(dataset) == len(coco['annotations'])
    assert warnings == []


def _set(key, index, value):
    def change(ann):
        ann[key][index] = value
    return change


BOX_FAULTS = {
    'zero-area': (_set('bbox', 2, 0), 'width or height under 1 px, or area <= 0'),
    'negative': (_set('bbox', 3, -8), 'width or height under 1 px, or area <= 0'),
    'nan': (_set('bbox', 0, NAN), 'NaN or Inf in bbox'),
    'outside': (_set('bbox', 0, 500), 'outside the image'),
    'malformed': (lambda ann: ann.update(bbox=[1, 2, 3]), 'malformed (bbox not 4 numbers, or no numeric area)'),
}


@pytest.mark.parametrize('fault', list(BOX_FAULTS))
def test_a_set_whose_every_box_is_invalid_is_an_error_naming_the_file(toy, tmp_path, warnings, fault):
    root, coco = toy
    change, reason = BOX_FAULTS[fault]
    path = tmp_path / f'{fault}.json'
    count = len(coco['annotations'])
    with pytest.raises(ValueError, match=re.escape(f"annotation file '{path}': no annotation to train on in 6 images "
                                                   f"({count} annotations read, {count} dropped ({count} {reason})")):
        build(root, edited(coco, change), path)
    assert warnings == [f"annotation file '{path}': dropped {count} of {count} annotations that cannot be trained on "
                        f"({count} {reason}; annotation ids 1, 2, 3, 4, 5 ...)."]


def test_invalid_boxes_among_valid_ones_are_dropped_and_counted(toy, tmp_path, warnings):
    root, coco = toy
    coco = edited(coco, _set('bbox', 1, NAN), which={0})
    coco = edited(coco, _set('bbox', 1, -100), which={3})
    dataset = build(root, coco, tmp_path / 'train.json')
    assert instances(dataset) == len(coco['annotations']) - 2
    ids = [coco['annotations'][i]['id'] for i in (0, 3)]
    assert warnings == [f"annotation file '{tmp_path / 'train.json'}': dropped 2 of {len(coco['annotations'])} "
                        f"annotations that cannot be trained on (1 NaN or Inf in bbox, 1 outside the image; "
                        f"annotation ids {ids[0]}, {ids[1]})."]


BAD_POLYGONS = [[1, 2, 3, 4], [1, 2, 3, 4, 5], [1, 2, 3, NAN, 5, 6], [0, 0, 10, 10, 20, 20]]  # 2 points, odd,
# NaN, collinear (no area)


def test_a_set_whose_every_polygon_is_invalid_is_an_error(toy, tmp_path, warnings):
    root, coco = toy
    coco = edited(coco, lambda ann: ann.update(segmentation=[BAD_POLYGONS[ann['id'] % 4]]))
    count = len(coco['annotations'])
    with pytest.raises(ValueError, match=re.escape(f'{count} dropped ({count} no usable polygon or RLE mask)')):
        build(root, coco, tmp_path / 'train.json')


def test_unusable_polygons_beside_a_usable_one_are_removed(toy, tmp_path, warnings):
    root, coco = toy
    good = coco['annotations'][0]['segmentation'][0]
    coco = edited(coco, lambda ann: ann.update(segmentation=[BAD_POLYGONS[2], good]), which={0})
    dataset = build(root, coco, tmp_path / 'train.json')
    first = next(i for i in range(len(dataset)) if dataset.get_data_info(i)['img_id'] == coco['annotations'][0][
        'image_id'])
    assert good in dataset.get_data_info(first)['instances'][0]['mask']
    assert dataset.get_data_info(first)['instances'][0]['mask'] == [good]
    assert instances(dataset) == len(coco['annotations']) and warnings == []


def test_crowd_only_set_is_an_error(toy, tmp_path, warnings):
    root, coco = toy
    with pytest.raises(ValueError, match=r'no annotation to train on .*none dropped as invalid; the others are '
                                         r'crowd/ignore annotations'):
        build(root, edited(coco, lambda ann: ann.update(iscrowd=1)), tmp_path / 'train.json')


def test_categories_that_match_no_class_are_an_error(toy, tmp_path, warnings):
    root, coco = toy
    coco = copy.deepcopy(coco)
    for category in coco['categories']:
        category['name'] = category['name'].upper()
    with pytest.raises(ValueError, match=r"none left after filter_cfg=.* \(none of its categories is named as a class "
                                         r"of \['square', 'circle', 'triangle'\]\)"):
        build(root, coco, tmp_path / 'train.json')


def test_an_empty_dataset_is_an_error_naming_the_file(toy, tmp_path, warnings):
    root, coco = toy
    path = tmp_path / 'train.json'
    with pytest.raises(ValueError, match=re.escape(f"annotation file '{path}' gives an empty training set: it lists "
                                                   f"no images.")):
        build(root, dict(coco, images=[], annotations=[]), path)
    with pytest.raises(ValueError, match=re.escape(f"annotation file '{path}' gives an empty training set: it lists "
                                                   f"6 images, none left after filter_cfg=")):
        build(root, dict(coco, annotations=[]), path)


@pytest.mark.parametrize('content', [b'', b'{"images": [', b'[]', 'no bbox', 'no width', 'no annotation id'])
def test_an_empty_or_malformed_file_is_an_error_naming_it(toy, tmp_path, content):
    root, coco = toy
    if content == 'no bbox':
        content = edited(coco, lambda ann: ann.pop('bbox'), which={2})
    elif content == 'no width':
        content = copy.deepcopy(coco)
        content['images'][1].pop('width')
    elif content == 'no annotation id':
        content = edited(coco, lambda ann: ann.pop('image_id'), which={0})
    path = tmp_path / 'train.json'
    if isinstance(content, dict) and 'bbox' not in content['annotations'][2]:  # one bad annotation: dropped
        dataset = build(root, content, path)
        assert instances(dataset) == len(coco['annotations']) - 1
        return
    with pytest.raises(ValueError, match=re.escape(f"annotation file '{path}' is not a usable COCO annotation file (")
                       + r'.*It must be COCO JSON'):
        build(root, content, path)


def test_a_test_mode_set_keeps_mmdets_behaviour(toy, tmp_path, warnings):
    """Validation and test sets are evaluated against the file itself: nothing to train on is no error there."""
    root, coco = toy
    dataset = build(root, edited(coco, _set('bbox', 2, 0)), tmp_path / 'val.json', test_mode=True)
    assert len(dataset) == 6 and instances(dataset) == 0
    assert len(warnings) == 1 and 'dropped' in warnings[0]
