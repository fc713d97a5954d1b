# Mask R-CNN + FPN, Sequencer2D-S, COCO 1x. No paper settings exist for Sequencer2D detection: this is the
# Dual-ViT recipe (maskrcnn_dualvit_s_coco.py: optimizer, schedule, pipeline, fp16) with the Sequencer2D backbone.
# Primitive of the maskrcnn Sequencer2D family.
_base_ = './maskrcnn_dualvit_s_coco.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmdualvit.Sequencer2D',
        arch='s',
        pyramid='resample',  # strides 7/14/14/14 resampled to 4/8/16/32 (README, 'Sequencer2D pyramid')
        drop_path_rate=0.1,  # Sequencer2D-S's ImageNet value
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/sequencer2d_s.pth')),
    neck=dict(in_channels=[192, 384, 384, 384]))
