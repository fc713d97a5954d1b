# UperNet, Dual-ViT-L, ADE20K 512x512, 160k. No official config for L: the S/B recipe with drop-path 0.3.
_base_ = './upernet_dualvit_s_ade20k.py'
model = dict(
    backbone=dict(arch='l', drop_path_rate=0.3, init_cfg=dict(checkpoint='checkpoints/dualvit_l.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 512]),
    auxiliary_head=dict(in_channels=384))
