"""Run the official Dual-ViT detectors and segmentor (mmdet 2.x / mmseg 0.x) on fixed images with deterministic
weights and store what tests/test_fidelity.py compares our configs with (tests/data/official/).

    .venv-official/bin/python dev/official_outputs.py --official-repo PATH [--systems maskrcnn retinanet ...]

Runs in the environment of dev/official_env.sh (torch 2.1.2, mmcv-full 1.7.2, mmdet 2.28.2), never in ours. PATH is
a checkout of https://github.com/YehLi/ImageNetModel; its code is imported from there and never copied here.

Each system is built from the official config and the official backbone file, exactly as stored, with these
run-time changes (the only ones):
- detection: ``model.pretrained`` / ``model.backbone.pretrained`` set to None (no ImageNet file is read; the
  official ``dualvit_s`` class reads ``kwargs['pretrained']``, so the key must exist); every weight is then replaced
  by the deterministic ``refweights`` tensor of its official key (tests/data/refweights.py), loaded strictly.
- segmentation: the vendored mmseg 0.11.0 of ``semantic_segmentation/`` is imported in place of an installed mmseg
  (it is the code the paper's numbers come from); its import-time check ``mmcv <= 1.5.0`` is passed by showing it
  mmcv's version as 1.5.0 during that import (mmcv-full 1.7.2 keeps the APIs it uses); SyncBN is converted to BN
  (CPU, one process; the same statistics in eval mode); for the training step only, the outputs of UPerHead's
  lateral convs are cloned, because the vendored head adds into them in place, which torch 2.1's autograd refuses
  (mmseg 0.30 adds out of place: the same sums).
- both: for the training step only, drop-path and dropout probabilities are set to 0 on the built model (the
  official detection backbone hard-codes drop_path_rate=0.15).

Written per system: ``<system>_keys.json`` (the state_dict keys and shapes, as a checkpoint of that system holds
them) and per image ``<system>_<image>.npz``: the final outputs (detection: boxes, scores,
labels and, for instance segmentation, the masks bit-packed; segmentation: the label map and the logits on a
16-pixel grid). ``manifest.json`` names the systems, our config for each, the images, the environment, and the
official test pipeline's input per image: its shapes, the sha256 of the normalised padded float32 tensor and of the
resized uint8 image it was made from (padding excluded; see ``uint8_input``).
"""
import argparse
import hashlib
import importlib.util
import json
import os
import os.path as osp
import sys

import numpy as np
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
OUT = osp.join(ROOT, 'tests', 'data', 'official')

# system: (task, official config under the checkout, our config)
SYSTEMS = {
    'maskrcnn': ('det', 'object_detection/configs/dualvit/mask_rcnn_dualvit_s_fpn_1x_coco.py',
                 'configs/maskrcnn_dualvit_s_coco.py'),
    'retinanet': ('det', 'object_detection/configs/dualvit/retinanet_dualvit_s_fpn_1x_coco.py',
                  'configs/retinanet_dualvit_s_coco.py'),
    'cascade': ('det', 'object_detection/configs/dualvit/cascade_mask_rcnn_dualvit_s_fpn_3x_mstrain_fp16.py',
                'configs/cascade_mask_rcnn_dualvit_s_3x_coco.py'),
    'atss': ('det', 'object_detection/configs/dualvit/atss_dualvit_s_fpn_3x_mstrain_fp16.py',
             'configs/atss_dualvit_s_3x_coco.py'),
    'gfl': ('det', 'object_detection/configs/dualvit/gfl_dualvit_s_fpn_3x_mstrain_fp16.py',
            'configs/gfl_dualvit_s_3x_coco.py'),
    # named _dualvit_b_ upstream, but its backbone is dualvit_s
    'sparse_rcnn': ('det', 'object_detection/configs/dualvit/'
                           'sparse_rcnn_dualvit_b_fpn_300_proposals_crop_mstrain_480-800_3x_coco.py',
                    'configs/sparse_rcnn_dualvit_s_3x_coco.py'),
    'upernet': ('seg', 'semantic_segmentation/configs/dualvit/upernet_dualvit_s_512x512_160k_ade20k.py',
                'configs/upernet_dualvit_s_ade20k.py'),
}
# Systems whose losses are deterministic: one training forward and backward on the synthetic image is stored.
TRAIN_SYSTEMS = {'retinanet', 'upernet'}
TRAIN_IMAGE = 'synthetic_333x517'
SEG_GRID = 16  # segmentation logits are stored every SEG_GRID pixels (from SEG_GRID // 2), all classes


def load_test_data_module(name):
    """tests/data/<name>.py (refweights: the deterministic weights; fidelity_common: what both sides share)."""
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'tests', 'data', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = load_test_data_module('fidelity_common')


def synthetic_image(height, width):
    """A smooth, deterministic colour image (gradients and filled shapes; compresses well as PNG)."""
    import cv2
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin((x + y) / 37.0)], axis=-1)
    image = image.astype(np.uint8)
    cv2.rectangle(image, (width // 8, height // 6), (width // 2, height // 2), (30, 200, 90), -1)
    cv2.circle(image, (2 * width // 3, 2 * height // 3), min(height, width) // 5, (220, 40, 160), -1)
    cv2.ellipse(image, (width // 3, 4 * height // 5), (width // 6, height // 10), 30, 0, 360, (250, 240, 20), -1)
    return image


def images():
    """{name: path}: matplotlib's sample photograph (read in place) and the synthetic images (written to OUT)."""
    import cv2
    import matplotlib.cbook
    found = {'photo': str(matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False))}
    for height, width in [(333, 517)]:
        name = f'synthetic_{height}x{width}'
        path = osp.join(OUT, name + '.png')
        cv2.imwrite(path, synthetic_image(height, width))
        found[name] = path
    return found


def sha256_file(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def set_weights(model, refweights):
    state = model.state_dict()
    spec = {key: (list(value.shape), str(value.dtype)) for key, value in state.items()}
    model.load_state_dict(refweights.make_state_dict(spec), strict=True)
    return {key: [shape, dtype.replace('torch.', '')] for key, (shape, dtype) in spec.items()}


def uint8_input(img, mean, std, img_shape):
    """The uint8 image (3, h, w) the normalised input tensor (1, 3, H, W) was made from (``input_pixels``), after
    checking that it is one (every value is (pixel - mean) / std of an integer pixel) and that the padding is 0."""
    height, width = img_shape[:2]
    padded = img[0].clone()
    padded[:, :height, :width] = 0
    assert not padded.any(), 'the padding of the input is not 0'
    pixels, off = common.input_pixels(img, mean, std, img_shape)
    assert off < 1e-3, 'the input is not an integer image normalised'
    return pixels


# What a GPU run's Fp16OptimizerHook (mmcv 1.x, torch.cuda.amp.GradScaler) leaves in meta['fp16']; on CPU GradScaler
# is disabled and its state_dict() is empty, so it is written out here.
LOSS_SCALER = dict(scale=512.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000, _growth_tracker=0)


def checkpoint_skeleton(model, cfg, config_path, classes, palette=None):
    """A checkpoint as the official training writes it (mmcv.runner.save_checkpoint with the meta of the official
    train.py, its CheckpointHook, runner and Fp16OptimizerHook; the optimizer of the config after one step), with
    the tensors taken out: the model's are the refweights of ``<system>_keys.json``, the optimizer's are listed by
    shape (tests/test_fidelity.py puts both back)."""
    import tempfile

    from mmcv.runner import build_optimizer, save_checkpoint
    optimizer = build_optimizer(model, cfg.optimizer)
    for param in model.parameters():
        param.grad = torch.zeros_like(param) if param.requires_grad else None
    optimizer.step()
    by_epoch = cfg.get('runner', {}).get('type', 'EpochBasedRunner') == 'EpochBasedRunner'
    meta = dict(env_info='sys.platform: linux\nPython: 3.7.10\nCUDA available: True', config=cfg.pretty_text, seed=0,
                exp_name=osp.basename(config_path), CLASSES=classes, epoch=12 if by_epoch else 1,
                iter=87960 if by_epoch else 160000, hook_msgs=dict(last_ckpt='work_dirs/latest.pth'),
                fp16=dict(loss_scaler=dict(LOSS_SCALER)))
    if palette is None:
        import mmdet
        meta['mmdet_version'] = mmdet.__version__ + 'f78af77'  # the version and git hash, as train.py writes it
    else:
        meta.update(PALETTE=palette, mmseg_version='0.11.0' + 'f78af77')
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, osp.join(tmp, 'ckpt.pth'), optimizer=optimizer, meta=meta)
        checkpoint = torch.load(osp.join(tmp, 'ckpt.pth'))
    state = checkpoint['optimizer']['state']
    layout = {index: {name: [list(value.shape), str(value.dtype)] if torch.is_tensor(value) else value
                      for name, value in entry.items()} for index, entry in state.items()}
    assert set(checkpoint) == {'meta', 'state_dict', 'optimizer'}, sorted(checkpoint)
    return dict(meta=checkpoint['meta'],
                optimizer=dict(param_groups=checkpoint['optimizer']['param_groups'], state_layout=layout))


def detection_targets(image_path, scale_factor):
    """Two ground-truth boxes (the synthetic image's rectangle and disc) in input pixels, and their labels."""
    import cv2
    height, width = cv2.imread(image_path).shape[:2]
    radius = min(height, width) // 5
    boxes = np.array([[width // 8, height // 6, width // 2, height // 2],
                      [2 * width // 3 - radius, 2 * height // 3 - radius, 2 * width // 3 + radius,
                       2 * height // 3 + radius]], np.float32) * np.asarray(scale_factor, np.float32)
    return boxes, np.array([2, 17], np.int64)


def segmentation_target(image_path, size):
    """A label map of the input's (height, width): the synthetic image's shapes as classes 12 and 20 on class 5,
    with a 255 (ignored) frame."""
    import cv2
    height, width = cv2.imread(image_path).shape[:2]
    labels = np.full((height, width), 5, np.uint8)
    cv2.rectangle(labels, (width // 8, height // 6), (width // 2, height // 2), 12, -1)
    cv2.circle(labels, (2 * width // 3, 2 * height // 3), min(height, width) // 5, 20, -1)
    labels = cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    labels[:4], labels[-4:], labels[:, :4], labels[:, -4:] = 255, 255, 255, 255
    return labels


def run_detector(config_path, image_paths, refweights, train=False):
    import mmcv
    from mmcv.parallel import collate
    from mmdet.datasets import replace_ImageToTensor
    from mmdet.datasets.pipelines import Compose
    from mmdet.models import build_detector

    cfg = mmcv.Config.fromfile(config_path)
    cfg.model.pretrained = None
    cfg.model.backbone.pretrained = None
    model = build_detector(cfg.model, test_cfg=cfg.get('test_cfg')).eval()
    keys = set_weights(model, refweights)
    cfg.data.test.pipeline = replace_ImageToTensor(cfg.data.test.pipeline)  # as mmdet.apis.inference_detector
    pipeline = Compose(cfg.data.test.pipeline)
    norm = next(t for t in cfg.data.test.pipeline[1]['transforms'] if t['type'] == 'Normalize')
    outputs = {}
    for name, path in image_paths.items():
        data = collate([pipeline(dict(img_info=dict(filename=path), img_prefix=None))], samples_per_gpu=1)
        data['img_metas'] = [m.data[0] for m in data['img_metas']]
        data['img'] = [img.data[0] for img in data['img']]
        with torch.no_grad():
            result = model(return_loss=False, rescale=True, **data)[0]
        bbox_result, segm_result = result if isinstance(result, tuple) else (result, None)
        meta = data['img_metas'][0][0]
        pixels = uint8_input(data['img'][0], norm['mean'], norm['std'], meta['img_shape'])
        record = dict(bboxes=np.concatenate(bbox_result)[:, :4].astype(np.float32),
                      scores=np.concatenate(bbox_result)[:, 4].astype(np.float32),
                      labels=np.concatenate([np.full(len(b), i, np.int64) for i, b in enumerate(bbox_result)]))
        if segm_result is not None:
            masks = [m for per_class in segm_result for m in per_class]
            height, width = meta['ori_shape'][:2]
            record['masks'] = np.packbits(np.stack(masks).astype(bool), axis=-1) if masks else \
                np.zeros((0, height, (width + 7) // 8), np.uint8)
        outputs[name] = (record, dict(input_sha256=hashlib.sha256(data['img'][0].numpy().tobytes()).hexdigest(),
                                      pixels_sha256=hashlib.sha256(pixels.tobytes()).hexdigest(),
                                      input_shape=list(data['img'][0].shape), img_shape=list(meta['img_shape']),
                                      pad_shape=list(meta['pad_shape']),
                                      scale_factor=[float(s) for s in meta['scale_factor']]))
        if name == TRAIN_IMAGE:
            train_data = (data['img'][0], data['img_metas'][0], meta['scale_factor'], path)
    training = None
    if train:
        img, metas, scale_factor, path = train_data
        boxes, labels = detection_targets(path, scale_factor)
        common.no_randomness(model).train()
        losses = model.forward_train(img, metas, [torch.from_numpy(boxes)], [torch.from_numpy(labels)])
        training = (common.backward_record(model, losses), dict(gt_bboxes=boxes, gt_labels=labels))
        model.eval()
    from mmdet.datasets import CocoDataset
    return keys, outputs, checkpoint_skeleton(model, cfg, config_path, CocoDataset.CLASSES), training


def import_official_mmseg(official_repo):
    """The vendored mmseg 0.11.0 of the checkout, imported past its ``mmcv <= 1.5.0`` check (module docstring)."""
    import mmcv
    sys.path.insert(0, osp.join(official_repo, 'semantic_segmentation'))
    for name in [n for n in sys.modules if n == 'mmseg' or n.startswith('mmseg.')]:
        del sys.modules[name]
    real, mmcv.__version__ = mmcv.__version__, '1.5.0'
    try:
        import mmseg
        import mmseg.models  # noqa: F401  (registers DualVit, UPerHead ...)
    finally:
        mmcv.__version__ = real
    assert mmseg.__file__.startswith(official_repo), mmseg.__file__
    return mmseg


def official_resize_sizes():
    """[(width, height), (new width, new height)] of the official CResize rounding (vendored mmseg's
    ``rescale_size``) for scale (2048, 512) on a fixed spread of image sizes."""
    from mmseg.datasets.pipelines.transforms import rescale_size
    rng = np.random.RandomState(0)
    sizes = [(512, 600), (517, 333), (512, 512), (500, 375), (300, 1000), (2048, 512), (4000, 16), (16, 4000)]
    sizes += [tuple(int(v) for v in rng.randint(16, 3000, size=2)) for _ in range(400)]
    return [[list(size), list(rescale_size(size, (2048, 512)))] for size in sizes]


def run_segmentor(config_path, image_paths, refweights):
    import mmcv
    from mmcv.cnn.utils import revert_sync_batchnorm
    from mmcv.parallel import collate
    from mmseg.datasets.pipelines import Compose
    from mmseg.models import build_segmentor

    cfg = mmcv.Config.fromfile(config_path)
    cfg.model.pretrained = None
    model = revert_sync_batchnorm(build_segmentor(cfg.model, test_cfg=cfg.get('test_cfg'))).eval()
    keys = set_weights(model, refweights)
    pipeline = Compose(cfg.data.test.pipeline)
    norm = next(t for t in cfg.data.test.pipeline[1]['transforms'] if t['type'] == 'Normalize')
    outputs = {}
    for name, path in image_paths.items():
        data = collate([pipeline(dict(img_info=dict(filename=path), img_prefix=None))], samples_per_gpu=1)
        img = data['img'][0]
        metas = data['img_metas'][0].data[0]
        with torch.no_grad():
            logits = model.whole_inference(img, metas, rescale=True)  # before softmax, at the original size
            label = model.simple_test(img, metas, rescale=True)[0]
        start = SEG_GRID // 2
        pixels = uint8_input(img, norm['mean'], norm['std'], metas[0]['img_shape'])
        record = dict(label=label.astype(np.uint8),
                      logits_grid=logits[0, :, start::SEG_GRID, start::SEG_GRID].numpy().astype(np.float32))
        meta = metas[0]
        outputs[name] = (record, dict(input_sha256=hashlib.sha256(img.numpy().tobytes()).hexdigest(),
                                      pixels_sha256=hashlib.sha256(pixels.tobytes()).hexdigest(),
                                      input_shape=list(img.shape), img_shape=list(meta['img_shape']),
                                      pad_shape=list(meta['pad_shape']),
                                      scale_factor=[float(s) for s in meta['scale_factor']]))
        if name == TRAIN_IMAGE:
            train_data = (img, metas, path)
    img, metas, path = train_data
    # A batch of two, the image and its mirror image (the pyramid pooling's 1x1 BatchNorm needs more than one value
    # per channel in train mode; the official training used 2 images per GPU).
    gt = segmentation_target(path, img.shape[-2:])
    gt = np.stack([gt, gt[:, ::-1]])
    common.no_randomness(model).train()
    # The vendored UPerHead adds into its lateral maps in place (`laterals[i - 1] += ...`), which torch 2.1's autograd
    # refuses (the lateral ConvModule's ReLU saved that output for its backward); its lateral outputs are cloned
    # (mmseg 0.30 writes `laterals[i - 1] = laterals[i - 1] + ...`, the same sums).
    hooks = [conv.register_forward_hook(lambda module, args, out: out.clone())
             for conv in model.decode_head.lateral_convs]
    losses = model.forward_train(torch.cat([img, img.flip(-1)]), metas * 2, torch.from_numpy(gt).long()[:, None])
    training = (common.backward_record(model, losses), dict(gt_sem_seg=gt))
    for hook in hooks:
        hook.remove()
    model.eval()
    from mmseg.datasets import ADE20KDataset
    return (keys, outputs, checkpoint_skeleton(model, cfg, config_path, ADE20KDataset.CLASSES, ADE20KDataset.PALETTE),
            training)


def import_official_detection_backbone(official_repo):
    path = osp.join(official_repo, 'object_detection', 'dualvit.py')
    spec = importlib.util.spec_from_file_location('official_dualvit_det', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers dualvit_s / dualvit_b in mmdet's BACKBONES
    return module


def environment():
    import mmcv
    import mmdet
    return dict(torch=torch.__version__, mmcv=mmcv.__version__, mmdet=mmdet.__version__,
                mmseg='0.11.0 (vendored in YehLi/ImageNetModel semantic_segmentation/)', numpy=np.__version__)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--official-repo', required=True, help='a checkout of YehLi/ImageNetModel')
    parser.add_argument('--systems', nargs='+', choices=sorted(SYSTEMS), default=sorted(SYSTEMS))
    args = parser.parse_args(argv)
    official_repo = osp.abspath(args.official_repo)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(OUT, exist_ok=True)
    refweights = load_test_data_module('refweights')
    image_paths = images()
    manifest_path = osp.join(OUT, 'manifest.json')
    manifest = json.load(open(manifest_path)) if osp.exists(manifest_path) else dict(systems={})
    manifest.update(environment=environment(), seg_grid=SEG_GRID,
                    images={name: dict(file=osp.basename(path) if path.startswith(OUT) else
                                       'matplotlib sample_data/grace_hopper.jpg', sha256=sha256_file(path))
                            for name, path in image_paths.items()})
    import_official_detection_backbone(official_repo)
    for system in args.systems:
        task, official_config, our_config = SYSTEMS[system]
        print(f'[official_outputs] {system}: {official_config}', flush=True)
        config_path = osp.join(official_repo, official_config)
        if task == 'seg':
            import_official_mmseg(official_repo)
            keys, outputs, skeleton, training = run_segmentor(config_path, image_paths, refweights)
            manifest['official_resize_sizes'] = official_resize_sizes()
        else:
            keys, outputs, skeleton, training = run_detector(config_path, image_paths, refweights,
                                                             train=system in TRAIN_SYSTEMS)
        with open(osp.join(OUT, f'{system}_keys.json'), 'w') as f:
            json.dump(keys, f, indent=0)
        torch.save(skeleton, osp.join(OUT, f'{system}_checkpoint_skeleton.pth'))
        for name, (record, info) in outputs.items():
            np.savez_compressed(osp.join(OUT, f'{system}_{name}.npz'), **record)
        manifest['systems'][system] = dict(task=task, official_config=official_config, config=our_config,
                                           outputs={name: info for name, (_, info) in outputs.items()})
        if training is not None:
            record, targets = training
            np.savez_compressed(osp.join(OUT, f'{system}_train_targets.npz'), **targets)
            manifest['systems'][system]['train'] = dict(image=TRAIN_IMAGE, **record)
        with open(manifest_path, 'w') as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
    print(f'[official_outputs] written to {OUT}')


if __name__ == '__main__':
    main()
