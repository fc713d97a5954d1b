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
# Strict, safe loading for load_from / resume / test, and a --resume that never discards trained checkpoints; one
# training per work dir, never over its checkpoints; checkpoints written atomically that load with plain
# torch.load(weights_only=True), with or without mmdualvit, and never hold NaN/Inf; a NaN/Inf loss stops training.
runner_type = 'mmdualvit.StrictRunner'
default_hooks = dict(checkpoint=dict(type='mmdualvit.PortableCheckpointHook'),
                     finite_loss=dict(type='mmdualvit.FiniteLossHook'))
