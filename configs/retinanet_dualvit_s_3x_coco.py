# RetinaNet + FPN, Dual-ViT-S, COCO 3x multi-scale + crop (official retinanet_dualvit_s_fpn_3x_coco, in the repo
# history): the 1x primitive with the shared 3x recipe of _base_/dualvit_3x_coco.py, box annotations only.
_base_ = ['./retinanet_dualvit_s_coco.py', './_base_/dualvit_3x_coco.py']

# 2 images per GPU (8 GPUs, batch 16): the official file's dataset base (coco_detection_s.py) sets samples_per_gpu=2.
train_pipeline = _base_.dualvit_3x_box_pipeline
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
train_cfg = _base_.dualvit_3x_train_cfg
param_scheduler = _base_.dualvit_3x_param_scheduler
optim_wrapper = dict(_delete_=True, **_base_.dualvit_3x_optim_wrapper)
find_unused_parameters = _base_.dualvit_3x_find_unused_parameters
