# Mask R-CNN + FPN, Dual-ViT-B, COCO 1x (official mask_rcnn_dualvit_b_fpn_1x_coco).
_base_ = './maskrcnn_dualvit_s_coco.py'
model = dict(
    backbone=dict(arch='b', init_cfg=dict(checkpoint='checkpoints/dualvit_b.pth')),
    neck=dict(in_channels=[64, 128, 320, 512]))
