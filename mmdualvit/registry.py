"""The one registry node of mmdualvit.

It is a child of mmengine's root ``MODELS`` with scope ``mmdualvit``, so ``type='mmdualvit.DualViT'`` resolves from
mmdet's, mmseg's and mmpretrain's registries alike (they are children of the same root) without registering our
classes three times, and without importing mmdet or mmseg.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmdualvit', locations=['mmdualvit.models'])
