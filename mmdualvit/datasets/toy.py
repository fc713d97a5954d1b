"""Seeded toy datasets of coloured shapes, so demos and tests run without downloading COCO or ADE20K.

Every image shows one to four non-overlapping filled shapes of three classes (``TOY_CLASSES``) on a plain or noisy
background of a muted random colour. Each class has its own bright colour range (squares red, circles green,
triangles blue) as well as its own outline, so a small detector or segmentor learns it in a few hundred iterations.

Each shape is a convex polygon in continuous image coordinates (pixel ``(row, col)`` spans ``[col, col + 1) x
[row, row + 1)``), rounded to 1/100 px; a pixel belongs to the shape when its centre lies inside that polygon. The
same rounded polygon is written as the COCO ``segmentation``, so rasterising it (pycocotools) gives back the drawn
mask up to boundary pixels, and ``bbox`` / ``area`` are the tight box and pixel count of that mask.

Every image is drawn from its own generator seeded by ``(seed, split, index)``: output is byte-identical for a seed,
and changing ``num_train`` does not change the validation images. ``make_toy_coco`` and ``make_toy_ade`` draw the
same scenes for the same seed. Only numpy, cv2 and json are used, so this module imports neither mmdet nor mmseg.

Command line (works from an installed package; the paths are those ``configs/toy/`` expect, relative to the working
directory)::

    python -m mmdualvit.datasets.toy all                  # data/toy_coco and data/toy_ade
    python -m mmdualvit.datasets.toy coco --out data/toy_coco --num-train 200 --seed 1
    python -m mmdualvit.datasets.toy ade --image-size 256 --num-val 32
    python -m mmdualvit.datasets.toy all --out data/my --classes circle triangle   # a dataset with 2 classes
"""
import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import cv2
import numpy as np

TOY_CLASSES = ('square', 'circle', 'triangle')
# RGB, one per class; the middle of each class's colour range so visualisations look like the images.
TOY_PALETTE = [[220, 55, 55], [55, 220, 55], [55, 55, 220]]
# Semantic segmentation labels every pixel, so background is a class of its own (label 0, scored in mIoU).
TOY_SEG_CLASSES = ('background', ) + TOY_CLASSES
TOY_SEG_PALETTE = [[128, 128, 128]] + TOY_PALETTE

# Per-class (low, high) RGB bounds of the fill colour: one saturated channel per class keeps classes separable.
_CLASS_COLOURS = (
    ((185, 20, 20), (255, 95, 95)),
    ((20, 185, 20), (95, 255, 95)),
    ((20, 20, 185), (95, 95, 255)),
)
_CIRCLE_VERTICES = 32
_MAX_SHAPES = 4
_PLACEMENT_TRIES = 30
_GAP = 2  # px kept free between the boxes of two shapes, so masks never touch
_SPLIT_CODES = {'train': 0, 'val': 1}  # part of each image's seed; never reuse a code for another split
_FILE_RE = re.compile(r'^\d{6}\.png$')  # the names we write; only these are removed as stale

PathLike = Union[str, os.PathLike]


def _check_args(num_train: int, num_val: int, image_size: Sequence[int], seed: int) -> Tuple[int, int]:
    if num_train < 0 or num_val < 0:
        raise ValueError(f'num_train and num_val must be >= 0, got {num_train} and {num_val}')
    if len(image_size) != 2:
        raise ValueError(f'image_size must be (height, width), got {image_size!r}')
    height, width = (int(v) for v in image_size)
    if min(height, width) < 32:
        raise ValueError(f'image_size must be at least 32 x 32, got {image_size!r}')
    if int(seed) < 0:
        # np.random.SeedSequence takes non-negative entropy only.
        raise ValueError(f'seed must be >= 0, got {seed}')
    return height, width


def _shape_polygon(cls: int, x0: float, y0: float, size: float) -> np.ndarray:
    """Vertices (N, 2) as (x, y) of a class-``cls`` shape inscribed in the box ``[x0, x0+size] x [y0, y0+size]``."""
    if cls == 0:
        pts = [(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size)]
    elif cls == 1:
        angles = np.arange(_CIRCLE_VERTICES) * (2 * np.pi / _CIRCLE_VERTICES)
        r = size / 2
        pts = np.stack([x0 + r + r * np.cos(angles), y0 + r + r * np.sin(angles)], axis=1)
    else:
        pts = [(x0 + size / 2, y0), (x0 + size, y0 + size), (x0, y0 + size)]
    # Rounded once here, so the polygon that is drawn is exactly the one written to JSON.
    return np.round(np.asarray(pts, dtype=np.float64), 2)


def _polygon_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean mask of the pixels whose centre lies inside the convex polygon ``poly`` (boundary included)."""
    mask = np.zeros((height, width), dtype=bool)
    # Only the polygon's bounding window is tested, which keeps large images cheap.
    c0, r0 = (max(0, int(np.floor(v))) for v in poly.min(axis=0))
    c1, r1 = min(width, int(np.ceil(poly[:, 0].max()))), min(height, int(np.ceil(poly[:, 1].max())))
    px, py = np.meshgrid(np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5)
    nxt = np.roll(poly, -1, axis=0)
    # The sign of the shoelace sum tells the winding; inside means on the inner side of every edge.
    orient = np.sign(np.sum(poly[:, 0] * nxt[:, 1] - nxt[:, 0] * poly[:, 1]))
    inside = np.ones(px.shape, dtype=bool)
    for (ax, ay), (bx, by) in zip(poly, nxt):
        cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
        inside &= orient * cross >= -1e-9
    mask[r0:r1, c0:c1] = inside
    return mask


def _render_scene(rng: np.random.Generator, height: int, width: int,
                  kinds: Sequence[int] = (0, 1, 2)) -> Tuple[np.ndarray, List[dict]]:
    """Draw one RGB uint8 image and its shapes, each a dict with ``cls`` (0-based index into ``kinds``, the indices
    of the ``TOY_CLASSES`` drawn), ``polygon`` and ``mask``."""
    scale = min(height, width) / 128
    min_size = max(8, round(16 * scale))
    max_size = max(min_size, min(round(56 * scale), min(height, width) // 2))

    # A muted, roughly grey background stays far from every class's saturated fill colour.
    grey = rng.integers(50, 140)
    background = np.clip(grey + rng.integers(-25, 26, size=3), 0, 255)
    image = np.empty((height, width, 3), dtype=np.float32)
    image[...] = background

    shapes: List[dict] = []
    boxes: List[Tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, _MAX_SHAPES + 1))):
        # Rejecting overlapping placements (rather than occluding) keeps every mask equal to its whole polygon.
        for _ in range(_PLACEMENT_TRIES):
            cls = int(rng.integers(0, len(kinds)))
            size = int(rng.integers(min_size, max_size + 1))
            x0 = int(rng.integers(0, width - size + 1))
            y0 = int(rng.integers(0, height - size + 1))
            box = (x0, y0, x0 + size, y0 + size)
            if all(box[0] >= b[2] + _GAP or b[0] >= box[2] + _GAP or box[1] >= b[3] + _GAP or b[1] >= box[3] + _GAP
                   for b in boxes):
                break
        else:
            continue  # no free spot for this shape; the image keeps the ones already placed (at least one)
        boxes.append(box)
        poly = _shape_polygon(kinds[cls], x0, y0, size)
        mask = _polygon_mask(poly, height, width)
        low, high = _CLASS_COLOURS[kinds[cls]]
        image[mask] = [rng.integers(lo, hi + 1) for lo, hi in zip(low, high)]
        shapes.append(dict(cls=cls, polygon=poly, mask=mask))

    if rng.random() < 0.5:
        # Half the images get sensor-like noise over shapes and background alike.
        image += rng.normal(0.0, rng.uniform(3.0, 12.0), size=image.shape).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), shapes


def _scene(seed: int, split: str, index: int, height: int, width: int,
           kinds: Sequence[int]) -> Tuple[np.ndarray, List[dict]]:
    """The scene of image ``index`` of ``split``: its own generator, so it does not depend on the split sizes."""
    rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], index])
    return _render_scene(rng, height, width, kinds)


def _class_indices(classes: Sequence[str]) -> List[int]:
    """The ``TOY_CLASSES`` indices of ``classes`` (a non-empty subset, without repeats, in any order)."""
    unknown = [c for c in classes if c not in TOY_CLASSES]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise ValueError(f'classes must be distinct names out of {TOY_CLASSES}, got {tuple(classes)}')
    return [TOY_CLASSES.index(c) for c in classes]


def _file_name(index: int) -> str:
    return f'{index + 1:06d}.png'


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (RGB HxWx3 or single-channel HxW uint8) as PNG, raising instead of cv2's silent False."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise OSError(f'could not write {path}')


def _remove_stale(directory: Path, keep: Sequence[str]) -> None:
    """Delete files we wrote in an earlier, larger run, so directory scans (mmseg) see only this run's images."""
    keep = set(keep)
    for path in directory.iterdir():
        if path.is_file() and _FILE_RE.match(path.name) and path.name not in keep:
            path.unlink()


def _bbox_xywh(mask: np.ndarray) -> List[float]:
    ys, xs = np.nonzero(mask)
    x_min, y_min = int(xs.min()), int(ys.min())
    return [float(x_min), float(y_min), float(xs.max() - x_min + 1), float(ys.max() - y_min + 1)]


def make_toy_coco(out_dir: PathLike,
                  num_train: int = 40,
                  num_val: int = 16,
                  image_size: Sequence[int] = (128, 128),
                  seed: int = 0,
                  classes: Sequence[str] = TOY_CLASSES) -> Dict:
    """Write a COCO-format instance-segmentation toy dataset of coloured shapes.

    Layout: ``out_dir/{train,val}/000001.png ...`` and ``out_dir/annotations/instances_{train,val}.json``, with
    category ids 1, 2, ... for ``classes`` and image ``file_name`` relative to the split folder (use
    ``data_prefix=dict(img='train/')``). Annotations carry ``bbox`` ``[x, y, w, h]``, ``area`` (mask pixels),
    polygon ``segmentation``, ``iscrowd=0``.

    Args:
        out_dir: root folder; created if missing. Stale ``NNNNNN.png`` files of an earlier run are removed.
        num_train: number of training images.
        num_val: number of validation images.
        image_size: ``(height, width)``, at least 32 each; shape sizes (16-56 px at 128) scale with it.
        seed: non-negative seed; the same seed gives byte-identical files.
        classes: the shapes drawn, a subset of ``TOY_CLASSES`` (e.g. two, for a dataset with its own class count);
            with all three (the default) the files do not depend on this argument.

    Returns:
        dict with ``root``, ``classes`` and, per split ``'train'`` / ``'val'``, a dict of ``img_dir``,
        ``ann_file``, ``num_images`` and ``num_instances``.
    """
    height, width = _check_args(num_train, num_val, image_size, seed)
    kinds = _class_indices(classes)
    root = Path(out_dir)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(classes)]
    result: Dict = dict(root=str(root), classes=tuple(classes))

    for split, count in (('train', num_train), ('val', num_val)):
        img_dir = root / split
        img_dir.mkdir(parents=True, exist_ok=True)
        names = [_file_name(i) for i in range(count)]
        _remove_stale(img_dir, names)
        images, annotations = [], []
        for index, name in enumerate(names):
            image, shapes = _scene(seed, split, index, height, width, kinds)
            _write_png(img_dir / name, image)
            image_id = index + 1
            images.append(dict(id=image_id, file_name=name, width=width, height=height))
            for shape in shapes:
                annotations.append(
                    dict(
                        id=len(annotations) + 1,
                        image_id=image_id,
                        category_id=shape['cls'] + 1,
                        bbox=_bbox_xywh(shape['mask']),
                        area=float(shape['mask'].sum()),
                        segmentation=[[round(float(v), 2) for v in shape['polygon'].reshape(-1)]],
                        iscrowd=0))
        ann_file = root / 'annotations' / f'instances_{split}.json'
        coco = dict(
            info=dict(description=f'mmdualvit toy shapes ({split}, seed {seed})', version='1.0'),
            licenses=[],
            images=images,
            annotations=annotations,
            categories=categories)
        with open(ann_file, 'w', encoding='utf-8') as f:
            json.dump(coco, f, separators=(',', ':'))
        result[split] = dict(
            img_dir=str(img_dir), ann_file=str(ann_file), num_images=len(images), num_instances=len(annotations))
    return result


def make_toy_ade(out_dir: PathLike,
                 num_train: int = 40,
                 num_val: int = 16,
                 image_size: Sequence[int] = (128, 128),
                 seed: int = 0,
                 classes: Sequence[str] = TOY_CLASSES) -> Dict:
    """Write an ADE20K-layout semantic-segmentation toy dataset of coloured shapes.

    Layout: ``out_dir/images/{training,validation}/000001.png`` and the label maps of the same name under
    ``out_dir/annotations/{training,validation}/``; both are PNG, so use ``img_suffix='.png'`` and
    ``seg_map_suffix='.png'``. Labels are uint8 single-channel: 0 is background and 1, 2, ... are ``classes``, i.e.
    the indices of ``('background', ) + classes`` (``TOY_SEG_CLASSES`` by default). Load with
    ``reduce_zero_label=False``: background is a real class here (most pixels are background, and a segmentor must not
    paint it with shapes), so mIoU counts it. ADE20K's own ``reduce_zero_label=True`` would turn it into the ignore
    index and hide it from training and metrics.

    mmseg's ``ADE20KDataset`` rejects ``metainfo=dict(classes=TOY_SEG_CLASSES)`` (classes must be a subset of
    ADE's 150), so configs should use ``type='BaseSegDataset'`` with that metainfo and the arguments above.

    Args:
        out_dir: root folder; created if missing. Stale ``NNNNNN.png`` files of an earlier run are removed.
        num_train: number of training images.
        num_val: number of validation images.
        image_size: ``(height, width)``, at least 32 each; shape sizes (16-56 px at 128) scale with it.
        seed: non-negative seed; the same seed gives byte-identical files (and the scenes of ``make_toy_coco``).
        classes: the shapes drawn, as for :func:`make_toy_coco`.

    Returns:
        dict with ``root``, ``classes``, ``palette``, ``img_suffix``, ``seg_map_suffix``, ``reduce_zero_label``
        and, per split ``'train'`` / ``'val'``, a dict of ``img_dir``, ``ann_dir``, ``num_images`` and
        ``num_instances`` (shapes drawn).
    """
    height, width = _check_args(num_train, num_val, image_size, seed)
    kinds = _class_indices(classes)
    root = Path(out_dir)
    result: Dict = dict(
        root=str(root),
        classes=('background', ) + tuple(classes),
        palette=[TOY_SEG_PALETTE[0]] + [TOY_PALETTE[k] for k in kinds],
        img_suffix='.png',
        seg_map_suffix='.png',
        reduce_zero_label=False)

    for split, folder, count in (('train', 'training', num_train), ('val', 'validation', num_val)):
        img_dir = root / 'images' / folder
        ann_dir = root / 'annotations' / folder
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        names = [_file_name(i) for i in range(count)]
        _remove_stale(img_dir, names)
        _remove_stale(ann_dir, names)
        num_instances = 0
        for index, name in enumerate(names):
            image, shapes = _scene(seed, split, index, height, width, kinds)
            label = np.zeros((height, width), dtype=np.uint8)
            for shape in shapes:
                label[shape['mask']] = shape['cls'] + 1
            _write_png(img_dir / name, image)
            _write_png(ann_dir / name, label)
            num_instances += len(shapes)
        result[split] = dict(img_dir=str(img_dir), ann_dir=str(ann_dir), num_images=count, num_instances=num_instances)
    return result


_DEFAULT_OUT = {'coco': 'data/toy_coco', 'ade': 'data/toy_ade'}


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line of ``python -m mmdualvit.datasets.toy``; see the module docstring for examples."""
    parser = argparse.ArgumentParser(
        prog='python -m mmdualvit.datasets.toy', description='Generate the seeded toy shape datasets (no download).')
    parser.add_argument('kind', choices=['coco', 'ade', 'all'], help='which dataset(s) to write')
    parser.add_argument(
        '--out',
        help='output folder (default data/toy_coco or data/toy_ade); for "all", a parent folder that gets '
        'toy_coco/ and toy_ade/')
    parser.add_argument('--num-train', type=int, default=40, help='training images (default 40)')
    parser.add_argument('--num-val', type=int, default=16, help='validation images (default 16)')
    parser.add_argument(
        '--image-size', type=int, nargs='+', default=[128], metavar='N', help='H [W] in pixels (default 128)')
    parser.add_argument('--seed', type=int, default=0, help='non-negative seed (default 0)')
    parser.add_argument('--classes', nargs='+', default=list(TOY_CLASSES), choices=TOY_CLASSES, metavar='NAME',
                        help=f'the shapes drawn (default all: {" ".join(TOY_CLASSES)}); fewer give a dataset with '
                        'its own class count')
    args = parser.parse_args(argv)
    if len(args.image_size) > 2:
        parser.error('--image-size takes one (square) or two (height width) values')
    return args


def main(argv=None) -> None:
    """Generate the requested dataset(s) and print where they went."""
    args = parse_args(argv)
    kinds = ['coco', 'ade'] if args.kind == 'all' else [args.kind]
    size = tuple(args.image_size) * (3 - len(args.image_size))  # one value means square
    makers = {'coco': make_toy_coco, 'ade': make_toy_ade}
    for kind in kinds:
        if args.out is None:
            out = _DEFAULT_OUT[kind]
        elif args.kind == 'all':
            out = str(Path(args.out) / Path(_DEFAULT_OUT[kind]).name)
        else:
            out = args.out
        start = time.perf_counter()
        info = makers[kind](out, num_train=args.num_train, num_val=args.num_val, image_size=size, seed=args.seed,
                            classes=tuple(args.classes))
        elapsed = time.perf_counter() - start
        print(f'{kind}: wrote {out} in {elapsed:.2f}s (image size {size[0]}x{size[1]}, seed {args.seed})')
        for split in ('train', 'val'):
            s = info[split]
            files = s['ann_file'] if kind == 'coco' else s['ann_dir']
            print(f'  {split}: {s["num_images"]} images, {s["num_instances"]} shapes; images {s["img_dir"]}, '
                  f'annotations {files}')
        print(f'  classes={info["classes"]}')
        if kind == 'ade':
            print(f'  img_suffix={info["img_suffix"]!r} '
                  f'seg_map_suffix={info["seg_map_suffix"]!r} reduce_zero_label={info["reduce_zero_label"]}')


if __name__ == '__main__':
    main()
