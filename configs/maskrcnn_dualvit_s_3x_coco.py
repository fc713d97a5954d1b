# Mask R-CNN + FPN, Dual-ViT-S, COCO 3x multi-scale (official mask_rcnn_dualvit_s_fpn_3x_coco, in the repo history).
_base_ = './maskrcnn_dualvit_s_coco.py'

# DETR-style augmentation: short side 480-800 (long side <= 1333), or resize to 400/500/600, crop 384-600, resize.
_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333), (704, 1333),
           (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[[dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)],
                    [
                        dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)],
                             keep_ratio=True),
                        dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                             allow_negative_crop=True),
                        dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)
                    ]]),
    dict(type='PackDetInputs')
]
# The official 3x runs used 1 image per GPU (8 GPUs, batch 8).
train_dataloader = dict(batch_size=1, dataset=dict(pipeline=train_pipeline))
auto_scale_lr = dict(base_batch_size=8)

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1)
]
# AdamW lr 1e-4, wd 0.05; no decay for keys containing 'norm' (the Swin-derived custom keys of the official config;
# the other two match no Dual-ViT parameter and are kept for parity).
optim_wrapper = dict(
    optimizer=dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))
