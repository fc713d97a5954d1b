# The Dual-ViT COCO 3x recipe, written once for every *_3x_coco.py (official *_3x_mstrain_fp16 configs in
# github.com/YehLi/ImageNetModel, object_detection/configs/dualvit/). mmengine refuses two bases that set the same
# key, and each 3x config also inherits an mmdet base or our primitive, which set the usual keys (train_dataloader,
# param_scheduler, optim_wrapper ...). So this file only defines `dualvit_3x_*` variables; a 3x config lists it next
# to its other base and assigns them, e.g. `param_scheduler = _base_.dualvit_3x_param_scheduler`.

# Multi-scale + crop training from DETR / Sparse R-CNN: short side one of 480..800 (long side <= 1333), or short side
# one of 400/500/600, an absolute crop of 384-600 px, then short side one of 480..800 again. mmdet 2's
# AutoAugment + Resize(multiscale_mode='value', override=True) is RandomChoice + RandomChoiceResize in mmdet 3 (as in
# mmdet's own sparse-rcnn ..._crop-ms-480-800-3x_coco.py).
dualvit_3x_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333),
                     (704, 1333), (736, 1333), (768, 1333), (800, 1333)]
dualvit_3x_box_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[[dict(type='RandomChoiceResize', scales=dualvit_3x_scales, keep_ratio=True)],
                    [
                        dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)],
                             keep_ratio=True),
                        dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                             allow_negative_crop=True),
                        dict(type='RandomChoiceResize', scales=dualvit_3x_scales, keep_ratio=True)
                    ]]),
    dict(type='PackDetInputs')
]
# Instance segmentation (Mask R-CNN, Cascade Mask R-CNN): the same, loading masks too.
dualvit_3x_mask_pipeline = [
    dict(step, with_mask=True) if step['type'] == 'LoadAnnotations' else step for step in dualvit_3x_box_pipeline]

# 36 epochs; lr x0.1 after epochs 27 and 33, after a 500-iteration linear warmup from 0.001x (mmdet 2's
# schedule_1x warmup, which the official configs keep).
dualvit_3x_train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=36, val_interval=1)
dualvit_3x_param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1)
]

# AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05 without decay for keys containing 'norm' (the Swin-derived
# custom keys of the official configs; the other two match no Dual-ViT parameter and are kept for parity); fp16 with
# a static loss scale of 512 (mmdet 2's `fp16 = dict(loss_scale=512.)`). Sparse R-CNN's official run differs.
dualvit_3x_optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))

# The backbone of the systems that inherit an mmdet base rather than one of our primitives: Dual-ViT-S as in our
# Mask R-CNN / RetinaNet primitives (the official detection backbone hard-codes drop_path_rate 0.15 and a frozen-BN
# stem).
dualvit_3x_backbone = dict(
    _delete_=True,
    type='mmdualvit.DualViT',
    arch='s',
    drop_path_rate=0.15,
    stem_norm_cfg=dict(type='BN', requires_grad=False),
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dualvit_s.pth'))
# Set by every official 3x config except Sparse R-CNN's (DDP's unused-parameter search).
dualvit_3x_find_unused_parameters = True
