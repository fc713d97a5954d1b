# ImageNet-1k validation of an official Dual-ViT-B checkpoint (paper: 85.2 top-1 at 224).
_base_ = './imagenet_dualvit_s.py'
model = dict(backbone=dict(arch='b'), head=dict(in_channels=512, num_heads=16))
