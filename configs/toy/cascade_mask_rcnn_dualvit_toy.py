# Cascade Mask R-CNN + Dual-ViT on the embedded toy COCO set, for CPU tests: the real 3x config with the toy data,
# schedule and widths of _base_/toy_coco.py, and slimmer heads (BN instead of SyncBN in the box heads, so it also
# runs in one CPU process). Copy it together with ../cascade_mask_rcnn_dualvit_s_3x_coco.py,
# ../_base_/dualvit_3x_coco.py and _base_/toy_coco.py (its bases).
_base_ = ['../cascade_mask_rcnn_dualvit_s_3x_coco.py', './_base_/toy_coco.py']

classes = _base_.toy_coco_classes
model = dict(
    backbone=_base_.toy_backbone,
    neck=_base_.toy_neck,
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=[
            dict(stage, in_channels=64, conv_out_channels=64, fc_out_channels=256, num_classes=len(classes),
                 norm_cfg=dict(type='BN', requires_grad=True)) for stage in _base_.model.roi_head.bbox_head
        ],
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=len(classes))))

train_pipeline = _base_.toy_coco_train_pipeline
test_pipeline = _base_.toy_coco_test_pipeline
train_dataloader = _base_.toy_coco_train_dataloader
val_dataloader = _base_.toy_coco_val_dataloader
test_dataloader = val_dataloader
val_evaluator = _base_.toy_coco_evaluator
test_evaluator = val_evaluator
train_cfg = _base_.toy_train_cfg
param_scheduler = _base_.toy_param_scheduler
optim_wrapper = _base_.toy_optim_wrapper
default_hooks = _base_.toy_default_hooks
log_processor = _base_.toy_log_processor
auto_scale_lr = dict(enable=False)
