# Cascade Mask R-CNN + FPN, Dual-ViT-S, COCO 3x multi-scale + crop, fp16: the official
# cascade_mask_rcnn_dualvit_s_fpn_3x_mstrain_fp16 settings on mmdet 3.x (box AP 52.4 in the official README).
# mmdet's Cascade Mask R-CNN base already has the official RPN, RoI extractors, mask head, assigners and test
# settings; the official config changes the backbone, the FPN inputs and the three box heads, and uses the 3x recipe.
_base_ = ['mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', './_base_/dualvit_3x_coco.py']
custom_imports = dict(imports=['mmdualvit'], allow_failed_imports=False)

# The three stages differ only in the box coder's target stds (as in mmdet's base).
_stage_stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
model = dict(
    backbone=_base_.dualvit_3x_backbone,
    neck=dict(in_channels=[64, 128, 320, 448]),
    roi_head=dict(bbox_head=[
        # "4conv1fc" heads with SyncBN, class-specific regression of decoded boxes with a GIoU loss (weight 10).
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0)) for stds in _stage_stds
    ]))

# 1 image per GPU (8 GPUs, batch 8): the file as first published with the results (commit 8039229) uses
# coco_instance_b1.py; a later clean-up (2022-08-08) deleted that base and pointed the file at the 2-image one.
train_pipeline = _base_.dualvit_3x_mask_pipeline
train_dataloader = dict(batch_size=1, dataset=dict(type='mmdualvit.CheckedCocoDataset', pipeline=train_pipeline))
auto_scale_lr = dict(enable=False, base_batch_size=8)
train_cfg = _base_.dualvit_3x_train_cfg
param_scheduler = _base_.dualvit_3x_param_scheduler
optim_wrapper = dict(_delete_=True, **_base_.dualvit_3x_optim_wrapper)
find_unused_parameters = _base_.dualvit_3x_find_unused_parameters
# Strict, safe loading for load_from / resume / test, and a --resume that never discards trained checkpoints; one
# training per work dir, never over its checkpoints; checkpoints written atomically that load with plain
# torch.load(weights_only=True), with or without mmdualvit, and never hold NaN/Inf; a NaN/Inf loss stops training.
runner_type = 'mmdualvit.StrictRunner'
default_hooks = dict(checkpoint=dict(type='mmdualvit.PortableCheckpointHook'),
                     finite_loss=dict(type='mmdualvit.FiniteLossHook'))
