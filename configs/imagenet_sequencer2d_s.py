# ImageNet-1k validation of an official (or timm) Sequencer2D-S checkpoint (paper: 82.3 top-1 at 224):
#   python tools/test.py configs/imagenet_sequencer2d_s.py checkpoints/sequencer2d_s.pth
# Names are converted on load. Eval transform: short side 256 (bicubic), center crop 224 (crop_pct 0.875).
_base_ = ['mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py', 'mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['mmdualvit', 'mmdualvit.models.classifiers'], allow_failed_imports=False)

# Evaluation only: the official ImageNet training recipe is not provided.
train_dataloader = None
val_cfg = dict()
test_cfg = dict()

model = dict(
    type='mmdualvit.ImageNetClassifier',
    backbone=dict(type='mmdualvit.Sequencer2D', arch='s', pyramid='native', out_indices=(3, )),
    head=dict(type='mmdualvit.Sequencer2DClsHead', num_classes=1000, in_channels=384, topk=(1, 5)))
# Strict, safe loading of the checkpoint given to tools/test.py (mmpretrain's own tools/test.py honours it too): a
# file that does not fit the model is an error, never a random init. Evaluation only, so no training hooks.
runner_type = 'mmdualvit.StrictRunner'
