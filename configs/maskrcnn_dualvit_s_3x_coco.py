# Mask R-CNN + FPN, Dual-ViT-S, COCO 3x multi-scale + crop (official mask_rcnn_dualvit_s_fpn_3x_coco, in the repo
# history): the 1x primitive with the shared 3x recipe of _base_/dualvit_3x_coco.py.
_base_ = ['./maskrcnn_dualvit_s_coco.py', './_base_/dualvit_3x_coco.py']

# 1 image per GPU (8 GPUs, batch 8): the official file's dataset base is coco_instance_b1.py.
train_pipeline = _base_.dualvit_3x_mask_pipeline
train_dataloader = dict(batch_size=1, dataset=dict(pipeline=train_pipeline))
auto_scale_lr = dict(base_batch_size=8)
train_cfg = _base_.dualvit_3x_train_cfg
param_scheduler = _base_.dualvit_3x_param_scheduler
optim_wrapper = dict(_delete_=True, **_base_.dualvit_3x_optim_wrapper)
find_unused_parameters = _base_.dualvit_3x_find_unused_parameters
