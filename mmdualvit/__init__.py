"""mmdualvit: Dual-ViT and Sequencer2D backbones for OpenMMLab detection, segmentation and classification.

Importing the package registers ``mmdualvit.DualViT`` and ``mmdualvit.Sequencer2D`` (scope ``mmdualvit``), the
runner pieces our configs name (``mmdualvit.StrictRunner``, ``mmdualvit.PortableCheckpointHook``, the atomic file
backend of :mod:`mmdualvit.fileio`) and the one-entry ``weights_only`` allow-list of :mod:`mmdualvit.safe_globals`.
It does not import mmdet or mmseg.
"""
from . import deps  # noqa: F401  (first: a clear message when torch / mmengine / mmcv are missing or unsupported)
from . import safe_globals  # noqa: F401  (registers the allow-list used by weights_only loading)
from .engine import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .registry import HOOKS, MODELS
from .version import __version__

__all__ = ['HOOKS', 'MODELS', '__version__']
