# ImageNet-1k validation of an official (or timm) Sequencer2D-L checkpoint (paper: 83.4 top-1 at 224).
_base_ = './imagenet_sequencer2d_s.py'
model = dict(backbone=dict(arch='l'))
