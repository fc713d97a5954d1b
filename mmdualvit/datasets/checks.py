"""mmdet's COCO training set, with the annotation faults that leave nothing to train on turned into errors.

mmdet's ``CocoDataset`` drops boxes that are zero-area, negative, NaN or outside their image without a word, ignores
instances whose polygons are unusable only when the pipeline loads them (and rasterises NaN coordinates), and fails
with tracebacks that name no file on an empty or malformed annotation file. A training set left with nothing then
trains on background only, or, empty, waits forever in an infinite sampler. Our detection configs train on
``mmdualvit.CheckedCocoDataset`` instead; validation and test sets stay mmdet's.
"""
import logging
import math
from collections import Counter
from typing import List, Optional

from mmdet.datasets import CocoDataset
from mmengine.logging import print_log

from ..registry import DATASETS

_SHOWN = 5  # annotation ids named per message


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _usable_polygon(polygon) -> bool:
    """At least 3 finite (x, y) points enclosing a non-zero area."""
    if not isinstance(polygon, (list, tuple)) or len(polygon) < 6 or len(polygon) % 2:
        return False
    if not all(_number(v) and math.isfinite(v) for v in polygon):
        return False
    xs, ys = polygon[0::2], polygon[1::2]
    twice_area = sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))
    return twice_area != 0


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """:class:`mmdet.datasets.CocoDataset` that names its annotation file in every fault and refuses to train on
    nothing. Arguments and everything not listed here are mmdet's.

    - An annotation file that is empty, not COCO JSON, or lacks a field mmdet reads is a ``ValueError`` naming it.
    - Annotations that cannot be trained on are dropped, as mmdet drops most of them, and one warning counts them by
      reason: a box that is not four numbers (with a numeric ``area``), holds NaN/Inf, has a side under 1 px or an
      area <= 0, or does not overlap its image; and, when the pipeline loads masks, an instance without a usable
      polygon (3 or more finite points enclosing an area) or RLE mask. Unusable polygons next to usable ones are
      removed from their instance.
    - A training set (``test_mode=False``) without images, or without one annotation left to train on (crowd and
      ``ignore`` annotations do not count), is a ``ValueError`` naming the file.
    """

    def load_data_list(self) -> List[dict]:
        self._dropped: Counter = Counter()
        self._dropped_ids: list = []
        self._read = 0
        self._masks = any(getattr(t, 'with_mask', False) for t in getattr(self.pipeline, 'transforms', []))
        try:
            return super().load_data_list()
        except (ValueError, KeyError, TypeError, IndexError, AssertionError) as err:
            # ValueError covers json's JSONDecodeError; pycocotools asserts the top level is a dict.
            raise ValueError(
                f'annotation file {self.ann_file!r} is not a usable COCO annotation file ({type(err).__name__}: '
                f'{err}). It must be COCO JSON: "images" with id, file_name, width and height; "annotations" with '
                f'id, image_id, category_id, bbox and area; "categories". Regenerate or download it again if it is '
                f'empty or truncated.') from None

    def parse_data_info(self, raw_data_info: dict) -> dict:
        image = raw_data_info['raw_img_info']
        kept = []
        for ann in raw_data_info['raw_ann_info']:
            self._read += 1
            fault = None if ann.get('ignore', False) else self._fault(ann, image)
            if fault is None:
                kept.append(self._usable_mask_part(ann))
            else:
                self._dropped[fault] += 1
                self._dropped_ids.append(ann.get('id'))
        return super().parse_data_info(dict(raw_data_info, raw_ann_info=kept))

    def _fault(self, ann: dict, image: dict) -> Optional[str]:
        box = ann.get('bbox')
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_number(v) for v in box)
                and _number(ann.get('area'))):
            return 'malformed (bbox not 4 numbers, or no numeric area)'
        if not all(math.isfinite(v) for v in box):
            return 'NaN or Inf in bbox'
        x, y, w, h = box
        if w < 1 or h < 1 or ann['area'] <= 0:
            return 'width or height under 1 px, or area <= 0'
        if min(x + w, image['width']) <= max(x, 0) or min(y + h, image['height']) <= max(y, 0):
            return 'outside the image'
        if self._masks and not self._mask_usable(ann.get('segmentation')):
            return 'no usable polygon or RLE mask'
        return None

    @staticmethod
    def _mask_usable(segmentation) -> bool:
        if isinstance(segmentation, dict):  # RLE, as mmdet's LoadAnnotations accepts it
            return segmentation.get('size') is not None and isinstance(segmentation.get('counts'), (list, str))
        return isinstance(segmentation, list) and any(_usable_polygon(p) for p in segmentation)

    def _usable_mask_part(self, ann: dict) -> dict:
        segmentation = ann.get('segmentation')
        if self._masks and isinstance(segmentation, list):
            usable = [p for p in segmentation if _usable_polygon(p)]
            if len(usable) != len(segmentation):
                ann = dict(ann, segmentation=usable)
        return ann

    def filter_data(self) -> List[dict]:
        data_list = super().filter_data()
        where = f'annotation file {self.ann_file!r}'
        dropped = sum(self._dropped.values())
        reasons = ', '.join(f'{n} {reason}' for reason, n in self._dropped.most_common())
        ids = ', '.join(str(i) for i in self._dropped_ids[:_SHOWN]) + (' ...' if dropped > _SHOWN else '')
        if dropped:
            print_log(f'{where}: dropped {dropped} of {self._read} annotations that cannot be trained on ({reasons}; '
                      f'annotation ids {ids}).', logger='current', level=logging.WARNING)
        if self.test_mode:
            return data_list
        classes = list(self.metainfo['classes'])[:_SHOWN]
        if not data_list:
            found = (f'lists {len(self.data_list)} images, none left after filter_cfg={self.filter_cfg}'
                     if self.data_list else 'lists no images')
            if self.data_list and not self.cat_ids:
                found += f' (none of its categories is named as a class of {classes})'
            raise ValueError(
                f'{where} gives an empty training set: it {found}. Check ann_file and data_root, and that its images '
                f'have annotations of the classes {classes}.')
        usable = sum(not instance['ignore_flag'] for info in data_list for instance in info['instances'])
        if not usable:
            why = f'{dropped} dropped ({reasons})' if dropped else 'none dropped as invalid'
            raise ValueError(
                f'{where}: no annotation to train on in {len(data_list)} images ({self._read} annotations read, '
                f'{why}; the others are crowd/ignore annotations or of categories not among the classes '
                f'{classes}). Training would only see background. COCO boxes are '
                f'[x, y, width, height] in pixels and must overlap their image; check that this is the right file '
                f'and that its category names match the classes.')
        return data_list
