# Mask R-CNN + FPN, Dual-ViT-L, COCO 1x. No official detection config exists for L: the S/B recipe with the
# ImageNet drop-path of L (0.3). Its GPU memory need has not been measured (no GPU was available).
_base_ = './maskrcnn_dualvit_s_coco.py'
model = dict(
    backbone=dict(arch='l', drop_path_rate=0.3, init_cfg=dict(checkpoint='checkpoints/dualvit_l.pth')),
    neck=dict(in_channels=[96, 192, 384, 512]))
