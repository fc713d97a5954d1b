# UperNet, Sequencer2D-S, ADE20K 512x512, 160k. No paper settings exist for Sequencer2D segmentation: this is the
# Dual-ViT recipe (that of upernet_dualvit_s_ade20k.py, i.e. mmseg's Swin-T UperNet schedule and pipeline, fp16)
# with the Sequencer2D backbone. Primitive of the UperNet Sequencer2D family; it inherits only mmseg's own base, so
# the family's three files can be copied into another project on their own.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmdualvit'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmdualvit.Sequencer2D',
        arch='s',
        pyramid='resample',  # strides 7/14/14/14 resampled to 4/8/16/32 (docs/backbones.md, the Sequencer2D pyramid)
        drop_path_rate=0.1,  # Sequencer2D-S's ImageNet value
        # The authors' ImageNet weights, fetched once into torch.hub's cache (docs/checkpoints.md).
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/okojoalg/sequencer/releases/download/weights/sequencer2d_s.pth')),
    decode_head=dict(in_channels=[192, 384, 384, 384], channels=512),
    auxiliary_head=dict(in_channels=384, in_index=2, channels=256))

# fp16 with a static loss scale of 512, as the Dual-ViT segmentation recipe.
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
