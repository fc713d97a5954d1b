"""The toy shape datasets: deterministic, and loadable by mmdet's CocoDataset, pycocotools and mmseg."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmdualvit.datasets.toy import TOY_CLASSES, TOY_SEG_CLASSES, TOY_SEG_PALETTE, make_toy_ade, make_toy_coco


def _tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy_coco')
    return root, make_toy_coco(root)


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy_ade')
    return root, make_toy_ade(root)


@pytest.mark.parametrize('maker', [make_toy_coco, make_toy_ade])
def test_deterministic_per_seed(tmp_path, maker):
    kwargs = dict(num_train=5, num_val=3)
    maker(tmp_path / 'a', seed=7, **kwargs)
    maker(tmp_path / 'b', seed=7, **kwargs)
    maker(tmp_path / 'c', seed=8, **kwargs)
    a, b, c = (_tree_bytes(tmp_path / name) for name in 'abc')
    assert len(a) >= 8 and a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith('.png') and 'annotations' not in k)


def test_val_independent_of_train_count_and_stale_files_removed(tmp_path):
    make_toy_ade(tmp_path / 'a', num_train=6, num_val=3)
    make_toy_ade(tmp_path / 'b', num_train=2, num_val=3)
    a, b = _tree_bytes(tmp_path / 'a'), _tree_bytes(tmp_path / 'b')
    assert {k: v for k, v in a.items() if 'validation' in k} == {k: v for k, v in b.items() if 'validation' in k}
    # Re-running smaller into the same folder must not leave the old 6 images for mmseg's directory scan.
    make_toy_ade(tmp_path / 'a', num_train=2, num_val=3)
    assert _tree_bytes(tmp_path / 'a') == b


def test_coco_layout_and_mmdet_dataset(coco_root):
    from mmdet.datasets import CocoDataset

    root, info = coco_root
    assert info['train']['num_images'] == 40 and info['val']['num_images'] == 16
    for split in ('train', 'val'):
        dataset = CocoDataset(
            data_root=str(root),
            ann_file=f'annotations/instances_{split}.json',
            data_prefix=dict(img=f'{split}/'),
            metainfo=dict(classes=TOY_CLASSES),
            filter_cfg=None,
            pipeline=[],
            test_mode=False,
            lazy_init=False)
        assert len(dataset) == info[split]['num_images']
        num_instances = 0
        for i in range(len(dataset)):
            data = dataset.get_data_info(i)
            assert Path(data['img_path']).is_file()
            assert (data['height'], data['width']) == (128, 128)
            assert 1 <= len(data['instances']) <= 4
            for inst in data['instances']:
                x1, y1, x2, y2 = inst['bbox']
                assert 0 <= x1 < x2 <= data['width'] and 0 <= y1 < y2 <= data['height']
                assert inst['bbox_label'] in (0, 1, 2) and inst['ignore_flag'] == 0
                assert inst['mask'] and all(len(poly) >= 6 for poly in inst['mask'])
            num_instances += len(data['instances'])
        assert num_instances == info[split]['num_instances']


# pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; harmless and not ours.
@pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')
def test_coco_polygons_match_boxes_areas_and_pixels(coco_root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    root, info = coco_root
    coco = COCO(info['train']['ann_file'])
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(TOY_CLASSES)
    assert len(coco.getImgIds()) == 40 and len(coco.getAnnIds()) == info['train']['num_instances']
    sizes = []
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.imgs[ann['image_id']]
        assert ann['iscrowd'] == 0 and ann['category_id'] in (1, 2, 3)
        rle = mask_utils.merge(mask_utils.frPyObjects(ann['segmentation'], img['height'], img['width']))
        mask = mask_utils.decode(rle).astype(bool)
        assert abs(mask.sum() - ann['area']) <= max(3, 0.05 * ann['area'])
        np.testing.assert_allclose(mask_utils.toBbox(rle), ann['bbox'], atol=1.5)
        sizes.append(max(ann['bbox'][2:]))
        # Learnability: the shape's pixels are dominated by its class's colour channel (RGB: red, green, blue).
        rgb = cv2.cvtColor(cv2.imread(str(root / 'train' / img['file_name'])), cv2.COLOR_BGR2RGB)
        assert int(np.argmax(rgb[mask].mean(axis=0))) == ann['category_id'] - 1
    assert 14 <= min(sizes) and max(sizes) <= 58


def test_ade_layout_labels_and_mmseg_dataset(ade_root, coco_root, tmp_path):
    from mmseg.datasets import ADE20KDataset, BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations

    root, info = ade_root
    assert info['img_suffix'] == info['seg_map_suffix'] == '.png' and info['reduce_zero_label'] is False
    assert info['classes'] == TOY_SEG_CLASSES == ('background', ) + TOY_CLASSES
    assert len(TOY_SEG_PALETTE) == len(TOY_SEG_CLASSES)

    # ADE20KDataset only accepts a subset of its 150 classes as metainfo, so configs use BaseSegDataset
    # (or a subclass overriding METAINFO, checked below) with the toy classes.
    class ToyADE(ADE20KDataset):
        METAINFO = dict(classes=TOY_SEG_CLASSES, palette=TOY_SEG_PALETTE)

    for split, folder in (('train', 'training'), ('val', 'validation')):
        common = dict(
            data_root=str(root),
            data_prefix=dict(img_path=f'images/{folder}', seg_map_path=f'annotations/{folder}'),
            img_suffix='.png',
            seg_map_suffix='.png',
            reduce_zero_label=False,
            pipeline=[])
        dataset = BaseSegDataset(metainfo=dict(classes=TOY_SEG_CLASSES, palette=TOY_SEG_PALETTE), **common)
        assert len(dataset) == info[split]['num_images'] == len(ToyADE(**common))
        assert dataset.metainfo['classes'] == TOY_SEG_CLASSES and dataset.label_map is None
        for i in range(len(dataset)):
            data = dataset.get_data_info(i)
            assert Path(data['img_path']).is_file() and Path(data['seg_map_path']).is_file()
            label = cv2.imread(data['seg_map_path'], cv2.IMREAD_UNCHANGED)
            assert label.dtype == np.uint8 and label.shape == (128, 128)
            assert set(np.unique(label).tolist()) <= {0, 1, 2, 3} and (label > 0).any() and (label == 0).any()

    # mmseg's loader keeps every pixel: background stays class 0 (trained and scored), nothing becomes ignore (255).
    results = LoadAnnotations()(dict(dataset.get_data_info(0)))  # takes reduce_zero_label from the dataset
    gt = results['gt_seg_map']
    assert 0 in gt and 255 not in gt and set(np.unique(gt).tolist()) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(gt, cv2.imread(dataset.get_data_info(0)['seg_map_path'], cv2.IMREAD_UNCHANGED))

    # The same seed draws the same scenes as the COCO set: per-class pixel counts equal the summed areas.
    coco = json.loads(Path(coco_root[1]['train']['ann_file']).read_text())
    for img in coco['images'][:10]:
        label = cv2.imread(str(root / 'annotations' / 'training' / img['file_name']), cv2.IMREAD_UNCHANGED)
        for cat in (1, 2, 3):
            area = sum(a['area'] for a in coco['annotations'] if a['image_id'] == img['id'] and a['category_id'] == cat)
            assert (label == cat).sum() == area


def test_image_size_and_argument_checks(tmp_path):
    info = make_toy_coco(tmp_path / 'c', num_train=2, num_val=0, image_size=(64, 96))
    image = cv2.imread(str(tmp_path / 'c' / 'train' / '000001.png'))
    assert image.shape == (64, 96, 3) and info['val']['num_images'] == 0
    with pytest.raises(ValueError):
        make_toy_ade(tmp_path / 'd', image_size=(16, 16))
    with pytest.raises(ValueError):
        make_toy_coco(tmp_path / 'e', seed=-1)


@pytest.mark.slow
def test_command_line_module(tmp_path):
    """``python -m mmdualvit.datasets.toy`` (what an installed package offers) writes both sets where configs look."""
    import subprocess
    import sys
    result = subprocess.run(
        [sys.executable, '-W', 'error::RuntimeWarning', '-m', 'mmdualvit.datasets.toy', 'all', '--num-train', '2',
         '--num-val', '1', '--image-size', '48', '64'],
        cwd=tmp_path, capture_output=True, text=True, check=True)
    assert 'reduce_zero_label=False' in result.stdout
    assert cv2.imread(str(tmp_path / 'data/toy_coco/train/000002.png')).shape == (48, 64, 3)
    assert (tmp_path / 'data/toy_ade/annotations/validation/000001.png').is_file()
    coco = json.loads((tmp_path / 'data/toy_coco/annotations/instances_val.json').read_text())
    assert len(coco['images']) == 1 and coco['annotations']


def test_a_subset_of_classes_gives_a_dataset_with_its_own_class_count(tmp_path):
    classes = ('triangle', 'circle')
    coco = make_toy_coco(tmp_path / 'coco', num_train=6, num_val=2, classes=classes)
    ann = json.loads(Path(coco['train']['ann_file']).read_text())
    assert [(c['id'], c['name']) for c in ann['categories']] == [(1, 'triangle'), (2, 'circle')]
    assert {a['category_id'] for a in ann['annotations']} == {1, 2}
    image = cv2.imread(str(Path(coco['train']['img_dir']) / '000001.png'))[..., ::-1]
    first = next(a for a in ann['annotations'] if a['image_id'] == 1)
    x, y, w, h = (int(v) for v in first['bbox'])
    centre = image[y + h // 2, x + w // 2].astype(int)  # a triangle is blue, a circle green (TOY_PALETTE)
    assert centre.argmax() == (2 if first['category_id'] == 1 else 1)
    ade = make_toy_ade(tmp_path / 'ade', num_train=6, num_val=2, classes=classes)
    assert ade['classes'] == ('background', 'triangle', 'circle')
    labels = {int(v) for p in Path(ade['train']['ann_dir']).glob('*.png') for v in np.unique(cv2.imread(str(p), 0))}
    assert labels == {0, 1, 2}
    with pytest.raises(ValueError, match=r"classes must be distinct names out of \('square', 'circle', 'triangle'\)"):
        make_toy_coco(tmp_path / 'bad', classes=('circle', 'hexagon'))
