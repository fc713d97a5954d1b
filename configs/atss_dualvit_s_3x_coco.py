# ATSS + FPN, Dual-ViT-S, COCO 3x multi-scale + crop, fp16: the official atss_dualvit_s_fpn_3x_mstrain_fp16
# settings on mmdet 3.x (box AP 51.0 in the official README). mmdet's ATSS base carries the official head, FPN
# (P3-P7, extra convs on the FPN outputs), assigner and test settings; the backbone, the FPN inputs and the 3x recipe
# change.
_base_ = ['mmdet::atss/atss_r50_fpn_1x_coco.py', './_base_/dualvit_3x_coco.py']
custom_imports = dict(imports=['mmdualvit'], allow_failed_imports=False)

model = dict(backbone=_base_.dualvit_3x_backbone, neck=dict(in_channels=[64, 128, 320, 448]))

# 1 image per GPU (8 GPUs, batch 8): the file as first published with the results (commit 8039229) uses
# coco_detection_b1.py; a later clean-up (2022-08-08) deleted that base and pointed the file at the 2-image one.
train_pipeline = _base_.dualvit_3x_box_pipeline
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
