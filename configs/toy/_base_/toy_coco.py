# What every toy COCO config shares: the embedded toy set (`python -m mmdualvit.datasets.toy coco`, written to
# data/toy_coco relative to the working directory), 128-px images, a narrow Dual-ViT trained from scratch, and a short
# iteration-based schedule. Variables only (mmengine refuses two bases that set the same key, and each toy config
# also inherits its real config): a toy config lists this file next to its real config and assigns them.
toy_coco_root = 'data/toy_coco/'
toy_coco_classes = ('square', 'circle', 'triangle')
toy_coco_scale = (128, 128)

# The same architecture with fewer channels and blocks; no pretrained weights.
toy_backbone = dict(
    arch=dict(_delete_=True, stem_hidden_dim=16, embed_dims=[32, 64, 96, 128], depths=[1, 1, 2, 1],
              num_heads=[1, 2, 3, 4], mlp_ratios=[4, 4, 4, 3]),
    drop_path_rate=0.,
    stem_norm_cfg=dict(type='BN', requires_grad=True),
    init_cfg=None)
toy_neck = dict(in_channels=[32, 64, 96, 128], out_channels=64)

toy_coco_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=toy_coco_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
toy_coco_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=toy_coco_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
_toy_dataset = dict(data_root=toy_coco_root, metainfo=dict(classes=toy_coco_classes))
# The loop counts iterations, so the sampler never ends (mmdet's base samples epoch by epoch, which makes mmengine
# warn at every pass over the 40 images).
toy_coco_train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**_toy_dataset, ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                 pipeline=toy_coco_train_pipeline))
toy_coco_val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(**_toy_dataset, ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 pipeline=toy_coco_test_pipeline))
toy_coco_evaluator = dict(ann_file=toy_coco_root + 'annotations/instances_val.json')

toy_max_iters = 300
toy_train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=toy_max_iters, val_interval=toy_max_iters)
toy_param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=toy_max_iters, milestones=[240], gamma=0.1)
]
toy_optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4))
toy_default_hooks = dict(logger=dict(interval=10), checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=2))
toy_log_processor = dict(by_epoch=False)
