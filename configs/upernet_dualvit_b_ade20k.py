# UperNet, Dual-ViT-B, ADE20K 512x512, 160k (official upernet_dualvit_b_512x512_160k_ade20k: drop-path 0.3).
_base_ = './upernet_dualvit_s_ade20k.py'
model = dict(
    backbone=dict(arch='b', drop_path_rate=0.3, init_cfg=dict(checkpoint='checkpoints/dualvit_b.pth')),
    decode_head=dict(in_channels=[64, 128, 320, 512]))
