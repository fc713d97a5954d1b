"""Data transforms of the official Dual-ViT pipelines that mmdet / mmseg do not have."""
from typing import Optional, Tuple

import mmcv
from mmcv.transforms import Resize

from ..registry import TRANSFORMS


def official_rounded_size(size: Tuple[int, int], scale: Tuple[int, int], multiple: int = 16) -> Tuple[int, int]:
    """The (width, height) the official segmentation test pipeline (``CResize`` of YehLi/ImageNetModel's vendored
    mmseg 0.11) resizes an image of ``size`` = (width, height) to for ``scale`` = (long edge, short edge) limits.

    First the usual keep-ratio size (as ``mmcv.imrescale``: the largest scale that fits both limits, sides rounded
    to the nearest pixel). Then each side becomes a multiple of ``multiple``: the next one up if the side is at
    least halfway there (Python's ``round``, so an exact half rounds to the even count) and that stays within the
    side's limit (the short edge's for the strictly shorter side, the long edge's otherwise), else the one below.
    The width is settled first, and the height's shorter-or-not test sees the settled width, as upstream.
    """
    long_edge, short_edge = max(scale), min(scale)
    (width, height), _ = mmcv.rescale_size(size, scale, return_scale=True)
    units_w, units_h = width / multiple, height / multiple

    def settle(units: float, other: float) -> float:
        limit = short_edge if units < other else long_edge
        if (int(units) + 1) * multiple <= limit and round(units) - int(units) == 1:
            return units + 1
        return units

    units_w = settle(units_w, units_h)
    units_h = settle(units_h, units_w)
    return int(units_w) * multiple, int(units_h) * multiple


@TRANSFORMS.register_module()
class OfficialTestResize(Resize):
    """mmcv's ``Resize`` with ``keep_ratio=True``, except that the output sides are rounded to a multiple of
    ``multiple`` as the official Dual-ViT segmentation test pipeline does (see :func:`official_rounded_size`; the
    aspect ratio changes by at most half a multiple per side). The UperNet Dual-ViT configs use it for evaluation,
    with the backbone's ``test_tile_size=768``, to give the official test-time inputs and features.

    Args:
        scale (tuple[int, int]): (long edge, short edge) limits, as ``Resize``'s ``scale`` with ``keep_ratio``.
        multiple (int, optional): The sides' multiple. Defaults to 16 (the official value); ``None`` resizes as
            mmcv's ``Resize(keep_ratio=True)``, mmdet's and mmseg's usual test-time resize.
        **kwargs: Other ``Resize`` arguments (``interpolation``, ``backend``).
    """

    def __init__(self, scale: Tuple[int, int], multiple: Optional[int] = 16, **kwargs):
        if kwargs.pop('keep_ratio', True) is not True:
            raise ValueError('OfficialTestResize always keeps the aspect ratio; use Resize for keep_ratio=False')
        super().__init__(scale=scale, keep_ratio=True, **kwargs)
        self.multiple = multiple

    def _target(self, image) -> Tuple[int, int]:
        height, width = image.shape[:2]
        return official_rounded_size((width, height), self.scale, self.multiple)

    def _resize_img(self, results: dict) -> None:
        if self.multiple is None:
            return super()._resize_img(results)
        if results.get('img') is None:
            return
        height, width = results['img'].shape[:2]
        target = self._target(results['img'])
        results['img'] = mmcv.imresize(results['img'], target, interpolation=self.interpolation,
                                       backend=self.backend)
        results['img_shape'] = results['img'].shape[:2]
        results['scale_factor'] = (target[0] / width, target[1] / height)
        results['keep_ratio'] = True

    def _resize_seg(self, results: dict) -> None:
        if self.multiple is None:
            return super()._resize_seg(results)
        if results.get('gt_seg_map') is not None:
            results['gt_seg_map'] = mmcv.imresize(results['gt_seg_map'], self._target(results['gt_seg_map']),
                                                  interpolation='nearest', backend=self.backend)
