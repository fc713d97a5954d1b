"""mmdualvit: Dual-ViT and Sequencer2D backbones for OpenMMLab detection, segmentation and classification.

Importing the package registers ``mmdualvit.DualViT`` and ``mmdualvit.Sequencer2D`` (scope ``mmdualvit``) and makes
checkpoints written by mmengine's Runner loadable under torch's ``weights_only=True`` default. It does not import
mmdet or mmseg.
"""
from . import safe_globals  # noqa: F401  (registers the allow-list used by weights_only loading)
from .engine import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .registry import HOOKS, MODELS
from .version import __version__

__all__ = ['HOOKS', 'MODELS', '__version__']
