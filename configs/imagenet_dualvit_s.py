# ImageNet-1k validation of an official Dual-ViT-S checkpoint (paper: 84.1 top-1 at 224):
#   python tools/test.py configs/imagenet_dualvit_s.py checkpoints/dualvit_s.pth
# The official checkpoint loads as-is (names are converted on load). Eval transform: resize the short side to 256
# (bicubic), center-crop 224, ImageNet mean/std, as timm's default (crop_pct 0.875) used by the official code.
_base_ = ['mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py', 'mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['mmdualvit', 'mmdualvit.models.classifiers'], allow_failed_imports=False)

# Evaluation only: training with the official token-labeling recipe is not provided.
train_dataloader = None
val_cfg = dict()
test_cfg = dict()

model = dict(
    type='mmdualvit.ImageNetClassifier',
    backbone=dict(type='mmdualvit.DualViT', arch='s', out_type='raw', out_indices=(3, ),
                  stem_norm_cfg=dict(type='BN')),
    head=dict(type='mmdualvit.DualViTClsHead', num_classes=1000, in_channels=448, num_heads=14, topk=(1, 5)))
# Strict, safe loading of the checkpoint given to tools/test.py (mmpretrain's own tools/test.py honours it too): a
# file that does not fit the model is an error, never a random init. Evaluation only, so no training hooks.
runner_type = 'mmdualvit.StrictRunner'
