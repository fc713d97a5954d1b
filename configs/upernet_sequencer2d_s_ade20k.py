# UperNet, Sequencer2D-S, ADE20K 512x512, 160k. No paper settings exist for Sequencer2D segmentation: this is the
# Dual-ViT recipe (upernet_dualvit_s_ade20k.py) with the Sequencer2D backbone. Primitive of its family.
_base_ = './upernet_dualvit_s_ade20k.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmdualvit.Sequencer2D',
        arch='s',
        pyramid='resample',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/sequencer2d_s.pth')),
    decode_head=dict(in_channels=[192, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384))
