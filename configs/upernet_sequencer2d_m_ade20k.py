# UperNet, Sequencer2D-M, ADE20K 512x512, 160k (the Dual-ViT recipe; see upernet_sequencer2d_s_ade20k.py).
_base_ = './upernet_sequencer2d_s_ade20k.py'
model = dict(backbone=dict(arch='m', init_cfg=dict(
    checkpoint='https://github.com/okojoalg/sequencer/releases/download/weights/sequencer2d_m.pth')))
