"""Evaluate a trained toy Dual-ViT Mask R-CNN (``make demo``'s) with the official mmdet 2.x pipeline, from a copy of
its checkpoint in the authors' format; tools/test.py on that same file gives ours (docs/fidelity.md).

    .venv-official/bin/python dev/official_toy_ap.py --official-repo PATH \
        [--checkpoint work_dirs/demo/iter_300.pth] [--data-root data/toy_coco] [--out work_dirs/toy_authors.pth]
    .venv/bin/python tools/test.py configs/toy/maskrcnn_dualvit_toy.py work_dirs/toy_authors.pth

Runs in the environment of dev/official_env.sh. The checkpoint is rewritten as the official training writes one
(``mmcv.runner.save_checkpoint``: the same tensors under the same keys, ``meta`` with ``CLASSES``, ``mmcv_version``
...). The official system is the official Mask R-CNN config (``mask_rcnn_dualvit_s_fpn_1x_coco.py``) with the toy
config's changes (configs/toy/maskrcnn_dualvit_toy.py): the narrow Dual-ViT, registered here at run time as a
subclass of the official ``DualVit`` with the toy hyperparameters (the one patch: the official file registers only
``dualvit_s`` and ``dualvit_b``), 64-channel FPN and heads, 3 classes, the toy data and its 128-pixel test scale.
The official test pipeline (Resize, Normalize, Pad to 32) and test settings are kept. Prints mmdet 2's COCO tables.
"""
import argparse
import os.path as osp
import sys
from functools import partial

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from official_outputs import import_official_detection_backbone  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLASSES = ('square', 'circle', 'triangle')
TOY = dict(stem_width=16, embed_dims=[32, 64, 96, 128], num_heads=[1, 2, 3, 4], mlp_ratios=[4, 4, 4, 3],
           depths=[1, 1, 2, 1])  # configs/toy/_base_/toy_coco.py's toy_backbone


def register_toy_backbone(official_repo):
    from mmdet.models.builder import BACKBONES
    official = import_official_detection_backbone(official_repo)

    @BACKBONES.register_module(force=True)
    class dualvit_toy(official.DualVit):  # noqa: N801  (named as the official dualvit_s / dualvit_b)
        def __init__(self, **kwargs):
            super().__init__(norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), drop_path_rate=0., pretrained=None,
                             **TOY)


def toy_config(official_repo, data_root):
    import mmcv
    cfg = mmcv.Config.fromfile(osp.join(official_repo, 'object_detection', 'configs', 'dualvit',
                                        'mask_rcnn_dualvit_s_fpn_1x_coco.py'))
    cfg.model.pretrained = None
    cfg.model.backbone = dict(type='dualvit_toy')
    cfg.model.neck.update(in_channels=TOY['embed_dims'], out_channels=64)
    cfg.model.rpn_head.update(in_channels=64, feat_channels=64)
    cfg.model.roi_head.bbox_roi_extractor.out_channels = 64
    cfg.model.roi_head.bbox_head.update(in_channels=64, fc_out_channels=256, num_classes=len(CLASSES))
    cfg.model.roi_head.mask_roi_extractor.out_channels = 64
    cfg.model.roi_head.mask_head.update(in_channels=64, conv_out_channels=64, num_classes=len(CLASSES))
    test = cfg.data.test
    test.pipeline[1].img_scale = (128, 128)
    test.update(classes=CLASSES, ann_file=osp.join(data_root, 'annotations', 'instances_val.json'),
                img_prefix=osp.join(data_root, 'val') + '/')
    return cfg


def write_authors_checkpoint(model, src, dst, cfg):
    """``src`` (ours) as the official training writes a checkpoint; loads strictly into ``model`` first."""
    import mmcv
    from mmcv.runner import save_checkpoint
    state = torch.load(src, map_location='cpu', weights_only=True)['state_dict']
    model.load_state_dict(state, strict=True)
    model.CLASSES = CLASSES
    meta = dict(env_info='', config=cfg.pretty_text, seed=0, exp_name='maskrcnn_dualvit_toy.py', epoch=1, iter=300,
                mmdet_version='2.28.2', hook_msgs=dict(last_ckpt=dst))
    mmcv.mkdir_or_exist(osp.dirname(osp.abspath(dst)))
    save_checkpoint(model, dst, meta=meta)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--official-repo', required=True, help='a checkout of YehLi/ImageNetModel')
    parser.add_argument('--checkpoint', default=osp.join(ROOT, 'work_dirs', 'demo', 'iter_300.pth'))
    parser.add_argument('--data-root', default=osp.join(ROOT, 'data', 'toy_coco'))
    parser.add_argument('--out', default=osp.join(ROOT, 'work_dirs', 'toy_authors.pth'))
    args = parser.parse_args(argv)
    from mmcv.parallel import MMDataParallel
    from mmdet.apis import single_gpu_test
    from mmdet.datasets import build_dataloader, build_dataset
    from mmdet.models import build_detector

    register_toy_backbone(osp.abspath(args.official_repo))
    cfg = toy_config(osp.abspath(args.official_repo), args.data_root)
    model = build_detector(cfg.model, test_cfg=cfg.get('test_cfg')).eval()
    write_authors_checkpoint(model, args.checkpoint, args.out, cfg)
    print(f'[official_toy_ap] wrote {args.out} (authors\' format)')
    dataset = build_dataset(cfg.data.test, dict(test_mode=True))
    loader = build_dataloader(dataset, samples_per_gpu=1, workers_per_gpu=0, dist=False, shuffle=False)
    results = single_gpu_test(MMDataParallel(model), loader)
    metrics = dataset.evaluate(results, metric=['bbox', 'segm'])
    print('[official_toy_ap] mmdet 2.28.2:', {k: v for k, v in metrics.items() if k.endswith('_mAP')})


if __name__ == '__main__':
    main()
