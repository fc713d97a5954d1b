# RetinaNet + FPN, Sequencer2D-M, COCO 1x (the Dual-ViT recipe; see retinanet_sequencer2d_s_coco.py).
_base_ = './retinanet_sequencer2d_s_coco.py'
model = dict(backbone=dict(arch='m', init_cfg=dict(
    checkpoint='https://github.com/okojoalg/sequencer/releases/download/weights/sequencer2d_m.pth')))
