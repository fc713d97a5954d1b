# Mask R-CNN + FPN, Dual-ViT-S, COCO 1x: the official mask_rcnn_dualvit_s_fpn_1x_coco settings on mmdet 3.x.
# Primitive of the Mask R-CNN Dual-ViT family; variants override only what differs.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmdualvit'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmdualvit.DualViT',
        arch='s',
        drop_path_rate=0.15,  # hard-coded 0.15 in the official detection backbone (S and B)
        stem_norm_cfg=dict(type='BN', requires_grad=False),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dualvit_s.pth')),
    neck=dict(in_channels=[64, 128, 320, 448]))

# Official: AdamW lr 2e-4, weight decay 1e-4, no paramwise rules, fp16 with a static loss scale of 512.
# Schedule (12 epochs, steps at 8 and 11, 500-iter linear warmup from 1e-3), 1333x800 single-scale training with
# flip, and batch 2 per GPU x 8 GPUs come unchanged from the mmdet base.
optim_wrapper = dict(
    _delete_=True, type='AmpOptimWrapper', loss_scale=512., optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4))
auto_scale_lr = dict(enable=False, base_batch_size=16)
# Strict, safe loading for load_from / resume / test, and a --resume that never discards trained checkpoints; one
# training per work dir, never over its checkpoints; checkpoints written atomically that load with plain
# torch.load(weights_only=True), with or without mmdualvit, and never hold NaN/Inf; a NaN/Inf loss stops training.
runner_type = 'mmdualvit.StrictRunner'
default_hooks = dict(checkpoint=dict(type='mmdualvit.PortableCheckpointHook'),
                     finite_loss=dict(type='mmdualvit.FiniteLossHook'))
# Annotation faults are named, and a training set with nothing to train on is an error.
train_dataloader = dict(dataset=dict(type='mmdualvit.CheckedCocoDataset'))
