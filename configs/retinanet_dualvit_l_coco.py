# RetinaNet + FPN, Dual-ViT-L, COCO 1x. No official config for L: the S/B recipe with L's ImageNet drop-path (0.3).
_base_ = './retinanet_dualvit_s_coco.py'
model = dict(
    backbone=dict(arch='l', drop_path_rate=0.3, init_cfg=dict(checkpoint='checkpoints/dualvit_l.pth')),
    neck=dict(in_channels=[96, 192, 384, 512]))
