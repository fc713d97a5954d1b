# Mask R-CNN + FPN, Sequencer2D-S, COCO 1x. No paper settings exist for Sequencer2D detection: this is the
# Dual-ViT recipe (that of maskrcnn_dualvit_s_coco.py: optimizer, schedule, pipeline, fp16) with the Sequencer2D
# backbone. Primitive of the Mask R-CNN Sequencer2D family; it inherits only mmdet's own base, so the family's three
# files can be copied into another project on their own.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmdualvit'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmdualvit.Sequencer2D',
        arch='s',
        pyramid='resample',  # strides 7/14/14/14 resampled to 4/8/16/32 (docs/backbones.md, the Sequencer2D pyramid)
        drop_path_rate=0.1,  # Sequencer2D-S's ImageNet value
        # The authors' ImageNet weights, fetched once into torch.hub's cache (docs/checkpoints.md).
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/okojoalg/sequencer/releases/download/weights/sequencer2d_s.pth')),
    neck=dict(in_channels=[192, 384, 384, 384]))

# The Dual-ViT Mask R-CNN 1x recipe: AdamW lr 2e-4, weight decay 1e-4, fp16 with a static loss scale of 512; the
# schedule (12 epochs, steps 8/11, 500-iter warmup), 1333x800 pipeline and batch 2 x 8 GPUs are the mmdet base's.
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
