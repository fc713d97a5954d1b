# UperNet, Sequencer2D-L, ADE20K 512x512, 160k (the Dual-ViT recipe; see upernet_sequencer2d_s_ade20k.py).
_base_ = './upernet_sequencer2d_s_ade20k.py'
model = dict(backbone=dict(arch='l', init_cfg=dict(
    checkpoint='https://github.com/okojoalg/sequencer/releases/download/weights/sequencer2d_l.pth')))
