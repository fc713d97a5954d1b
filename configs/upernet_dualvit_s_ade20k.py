# UperNet, Dual-ViT-S, ADE20K 512x512, 160k iterations: the official upernet_dualvit_s_512x512_160k_ade20k settings
# on mmseg 1.x. mmseg's Swin-T UperNet config already carries the same recipe (AdamW lr 6e-5, betas (0.9, 0.999),
# wd 0.01, no decay for 'norm' keys, 1500-iter linear warmup from 1e-6 then poly (power 1.0, min 0) to 160k, batch
# 2 per GPU x 8, 512x512 crops of (2048, 512) resizes with ratio 0.5-2.0, flip, photometric distortion), so we
# inherit it and swap the backbone. Primitive of the UperNet Dual-ViT family.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmdualvit'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmdualvit.DualViT',
        arch='s',
        drop_path_rate=0.15,
        stem_norm_cfg=dict(type='SyncBN', requires_grad=True),  # official segmentation stem
        test_tile_size=768,  # official test time: inputs over 768 px take the features of 768x768 tiles
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dualvit_s.pth')),
    decode_head=dict(in_channels=[64, 128, 320, 448], channels=512),
    auxiliary_head=dict(in_channels=320, in_index=2, channels=256))

# Official test-time resize: keep-ratio (2048, 512) with each side rounded to a multiple of 16 (the official CResize;
# with test_tile_size above, what the paper's mIoU was measured with: docs/fidelity.md). mmseg's usual test time
# instead: --cfg-options test_dataloader.dataset.pipeline.1.multiple=None model.backbone.test_tile_size=None
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmdualvit.OfficialTestResize', scale=(2048, 512)),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# Official: fp16 with a static loss scale of 512.
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
auto_scale_lr = dict(enable=False, base_batch_size=16)
# mmseg's visualizer with one fix: it accepts the non-contiguous images mmseg's own browse_dataset.py passes.
visualizer = dict(type='mmdualvit.SegLocalVisualizer')
# Strict, safe loading for load_from / resume / test, and a --resume that never discards trained checkpoints; one
# training per work dir, never over its checkpoints; checkpoints written atomically that load with plain
# torch.load(weights_only=True), with or without mmdualvit, and never hold NaN/Inf; a NaN/Inf loss stops training.
runner_type = 'mmdualvit.StrictRunner'
default_hooks = dict(checkpoint=dict(type='mmdualvit.PortableCheckpointHook'),
                     finite_loss=dict(type='mmdualvit.FiniteLossHook'))
