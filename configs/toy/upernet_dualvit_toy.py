# UperNet + Dual-ViT on the embedded toy segmentation set (`python -m mmdualvit.datasets.toy ade`, written to
# data/toy_ade relative to the working directory), for CPU demos and tests. Inherits the real config and switches only
# data, image scale, schedule (incl. lr), norms (BN instead of SyncBN: one process) and widths (a narrow Dual-ViT and
# slim heads), trained from scratch. Copy it together with ../upernet_dualvit_s_ade20k.py (its base).
_base_ = '../upernet_dualvit_s_ade20k.py'

data_root = 'data/toy_ade/'
# Background (label 0) is a class: it is most of every image, so mIoU over all four classes shows whether the model
# tells shapes from background (mmdualvit.datasets.TOY_SEG_CLASSES / TOY_SEG_PALETTE).
classes = ('background', 'square', 'circle', 'triangle')
palette = [[128, 128, 128], [220, 55, 55], [55, 220, 55], [55, 55, 220]]
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(_delete_=True, stem_hidden_dim=16, embed_dims=[32, 64, 96, 128], depths=[1, 1, 2, 1],
                  num_heads=[1, 2, 3, 4], mlp_ratios=[4, 4, 4, 3]),
        drop_path_rate=0.,
        stem_norm_cfg=norm_cfg,
        init_cfg=None),
    decode_head=dict(in_channels=[32, 64, 96, 128], channels=64, num_classes=len(classes), norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=96, channels=32, num_classes=len(classes), norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),  # reduce_zero_label comes from the dataset (False)
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),  # reduce_zero_label comes from the dataset (False)
    dict(type='PackSegInputs')
]
# mmseg's ADE20KDataset only accepts subsets of ADE's 150 classes, so the toy set uses the generic dataset class
# with the same folder layout.
_dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=dict(classes=classes, palette=palette),
                img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=False)
# Training keeps mmseg's InfiniteSampler (the base's), so the iteration-based loop never runs out of data.
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(**_dataset, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(**_dataset, data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 200
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=20, end=max_iters, by_epoch=False)
]
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01))
# interval=1: with `--show-dir`, mmseg's own tools/test.py draws every image (its default, 50, skips a 16-image set).
default_hooks = dict(
    logger=dict(interval=10), checkpoint=dict(interval=100, max_keep_ckpts=2), visualization=dict(interval=1))
