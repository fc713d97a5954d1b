# Sparse R-CNN + Dual-ViT on the embedded toy COCO set, for CPU tests: the real 3x config with the toy data,
# schedule and widths of _base_/toy_coco.py, 64-channel proposal features and 30 proposals (a toy image holds at most
# a few shapes). Copy it together with ../sparse_rcnn_dualvit_s_3x_coco.py, ../_base_/dualvit_3x_coco.py and
# _base_/toy_coco.py (its bases).
_base_ = ['../sparse_rcnn_dualvit_s_3x_coco.py', './_base_/toy_coco.py']

classes = _base_.toy_coco_classes
num_proposals = 30
model = dict(
    backbone=_base_.toy_backbone,
    neck=_base_.toy_neck,
    rpn_head=dict(num_proposals=num_proposals, proposal_feature_channel=64),
    roi_head=dict(
        proposal_feature_channel=64,
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=[
            dict(stage, num_classes=len(classes), in_channels=64, feedforward_channels=256,
                 dynamic_conv_cfg=dict(stage.dynamic_conv_cfg, in_channels=64, feat_channels=16, out_channels=64))
            for stage in _base_.model.roi_head.bbox_head
        ]),
    test_cfg=dict(rcnn=dict(max_per_img=num_proposals)))

# Boxes only: Sparse R-CNN has no mask head.
train_pipeline = [dict(step, with_mask=False) if step.type == 'LoadAnnotations' else step
                  for step in _base_.toy_coco_train_pipeline]
test_pipeline = _base_.toy_coco_test_pipeline
train_dataloader = dict(_base_.toy_coco_train_dataloader,
                        dataset=dict(_base_.toy_coco_train_dataloader.dataset, pipeline=train_pipeline))
val_dataloader = _base_.toy_coco_val_dataloader
test_dataloader = val_dataloader
val_evaluator = _base_.toy_coco_evaluator
test_evaluator = val_evaluator
train_cfg = _base_.toy_train_cfg
param_scheduler = _base_.toy_param_scheduler
optim_wrapper = dict(_base_.toy_optim_wrapper, clip_grad=dict(max_norm=1, norm_type=2))
default_hooks = _base_.toy_default_hooks
log_processor = _base_.toy_log_processor
auto_scale_lr = dict(enable=False)
