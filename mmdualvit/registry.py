"""The registry nodes of mmdualvit.

Each is a child of mmengine's root registry with scope ``mmdualvit``, so ``type='mmdualvit.DualViT'`` resolves
from mmdet's, mmseg's and mmpretrain's registries alike (they are children of the same roots) without registering
our classes three times, and without importing mmdet or mmseg.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmdualvit', locations=['mmdualvit.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmdualvit', locations=['mmdualvit.engine'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope='mmdualvit',
                          locations=['mmdualvit.engine'])
RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, scope='mmdualvit', locations=['mmdualvit.engine'])
# Located lazily, as the visualizers below: mmdualvit.datasets.checks imports mmdet.
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='mmdualvit', locations=['mmdualvit.datasets.checks'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='mmdualvit',
                      locations=['mmdualvit.datasets.transforms'])
# Located lazily: mmdualvit.visualization imports mmseg, which the package itself does not.
VISUALIZERS = Registry('visualizer', parent=MMENGINE_VISUALIZERS, scope='mmdualvit',
                       locations=['mmdualvit.visualization'])
