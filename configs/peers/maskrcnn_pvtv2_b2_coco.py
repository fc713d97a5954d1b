# Mask R-CNN + FPN with PVTv2-B2 (mmdet's own backbone), the peer the Dual-ViT paper compares Mask R-CNN against
# (PVTv2 1x: AdamW lr 2e-4, wd 1e-4). mmdet 3.3 ships PVTv2 only for RetinaNet, so this is mmdet's R-50 Mask R-CNN
# with its PVTv2-B2 backbone, for tools/analysis/benchmark.py.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='PyramidVisionTransformerV2',
        embed_dims=64,
        num_layers=[3, 4, 6, 3],
        init_cfg=dict(checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2.pth')),
    neck=dict(in_channels=[64, 128, 320, 512]))
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4))
