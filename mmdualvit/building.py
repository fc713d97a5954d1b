"""Building a config's model and batches of synthetic data for it, on CPU and without pretrained weights: what the
tools that measure models (``tools/analysis/``, the ONNX export) and the tests need."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config


def build_from_config(config, cfg_options: Optional[dict] = None) -> Tuple[nn.Module, Config]:
    """Build a config's model on CPU with no pretrained weights (SyncBN reverted to BN); returns (model, cfg).

    ``config`` is a path, a package config such as ``'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'``, or a
    :class:`~mmengine.config.Config`.
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    if isinstance(config, str):
        if '::' in config:  # a config shipped inside a package, e.g. mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py
            from mmengine.hub import get_config
            cfg = get_config(config)
        else:
            cfg = Config.fromfile(config)
    else:
        cfg = config
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    cfg.model.backbone.init_cfg = None
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    rpn_head = getattr(model, 'rpn_head', None)
    if type(rpn_head).__name__ == 'EmbeddingRPNHead':
        # Sparse R-CNN's learned proposals are boxes only after their init (the whole image); PyTorch's default
        # Embedding init gives boxes of negative size, which RoIAlign refuses.
        rpn_head.init_weights()
    return model, cfg


def synthetic_batch(cfg, shape: Tuple[int, int], batch_size: int = 1, seed: int = 0) -> dict:
    """A batch of random images with random ground truth for the config's task (mmdet or mmseg)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = shape
    if cfg.default_scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        model = cfg.model
        head = model.roi_head.bbox_head if 'roi_head' in model else model.bbox_head
        if isinstance(head, (list, tuple)):  # one per stage (Cascade, Sparse R-CNN)
            head = head[0]
        with_mask = 'roi_head' in model and model.roi_head.get('mask_head') is not None
        torch.manual_seed(seed)
        batch = demo_mm_inputs(batch_size=batch_size, image_shapes=[(3, height, width)] * batch_size,
                               num_items=[3] * batch_size, num_classes=head.num_classes, with_mask=with_mask)
        batch['inputs'] = [x.float() for x in batch['inputs']]
        return batch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(batch_size):
        sample = SegDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape))
        labels = torch.randint(0, cfg.model.decode_head.num_classes, (1, height, width), generator=generator)
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=[torch.rand(3, height, width, generator=generator) * 255 for _ in samples],
                data_samples=samples)
