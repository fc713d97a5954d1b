"""mmseg's segmentation visualizer, made to accept any numpy image layout.

mmseg 1.2.2's ``SegLocalVisualizer`` draws its class labels with OpenCV on ``np.zeros_like(image)``, which keeps
the memory layout of ``image``. mmseg's own ``tools/analysis_tools/browse_dataset.py`` passes a non-contiguous view
(a CHW tensor permuted to HWC, then its channels reversed), and OpenCV refuses such an array as an output
("Layout of the output array img is incompatible with cv::Mat") under OpenCV 4.11, 4.12 and 5.0 alike, the
versions tried (open-mmlab/mmsegmentation#3405, fix proposed upstream in #3566 but unreleased). Our segmentation
configs name this subclass instead, so the upstream tools work with them unchanged.
"""
import numpy as np
from mmseg.visualization import SegLocalVisualizer as _MMSegLocalVisualizer

from .registry import VISUALIZERS


@VISUALIZERS.register_module()
class SegLocalVisualizer(_MMSegLocalVisualizer):
    """``mmseg.visualization.SegLocalVisualizer`` that first copies a non-contiguous image into C order."""

    def add_datasample(self, name, image: np.ndarray, *args, **kwargs):
        return super().add_datasample(name, np.ascontiguousarray(image), *args, **kwargs)
