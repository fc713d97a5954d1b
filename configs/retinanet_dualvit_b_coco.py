# RetinaNet + FPN, Dual-ViT-B, COCO 1x (official retinanet_dualvit_b_fpn_1x_coco).
_base_ = './retinanet_dualvit_s_coco.py'
model = dict(
    backbone=dict(arch='b', init_cfg=dict(checkpoint='checkpoints/dualvit_b.pth')),
    neck=dict(in_channels=[64, 128, 320, 512]))
