"""The main job (`make demo`): train Mask R-CNN + Dual-ViT on the toy COCO shapes on CPU, evaluate once, draw.

    python tools/demo.py                      # 300 iterations, work dir work_dirs/demo
    python tools/demo.py --iters 20 --work-dir /tmp/demo

Prints a short story (data, a progress line every 50 iterations, one results table) and writes the full logs,
the COCO result files, one labelled picture per validation image and a contact sheet into the work dir. The seed
is fixed and mmengine's deterministic mode is on, so one machine prints the same numbers on every run.
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout (configs/); mmdualvit itself is imported as installed

# mmengine imports pkg_resources, which setuptools >= 81 marks deprecated: noise for a demo's reader.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

import numpy as np  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402

CONFIG = ROOT / 'configs' / 'toy' / 'maskrcnn_dualvit_toy.py'
SEED = 0
SCORE_THR = 0.5  # predictions drawn in the pictures (the mAP uses all of them)
UPSCALE = 3  # 128-px toy images become 384-px panels
TITLE_HEIGHT = 28
# Bright overlay colours (RGB) that none of the toy shapes' own colours resemble, in the classes' order.
COLOURS = {'square': (255, 200, 0), 'circle': (255, 0, 220), 'triangle': (0, 235, 255)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=None, help='training iterations (default: the config, 300)')
    parser.add_argument('--work-dir', default='work_dirs/demo', help='logs, checkpoints, results and pictures')
    parser.add_argument('--data-root', default='data/toy_coco', help='where the toy COCO set is generated')
    parser.add_argument('--progress-every', type=int, default=50, help='iterations between progress lines')
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        parser.error(f'--iters must be >= 1, got {args.iters}')
    return args


def build_config(args, data_root: str, work_dir: str):
    """The toy config with the demo's settings: seeded, deterministic, no validation loop, COCO AP per class."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(CONFIG))
    cfg.work_dir = work_dir
    cfg.overwrite_work_dir = True  # each `make demo` is a fresh run that replaces the previous demo's checkpoints
    cfg.randomness = dict(seed=SEED, deterministic=True)
    cfg.launcher = 'none'
    # Evaluate once, after training: no validation loop (the train loop would otherwise evaluate at its last
    # iteration); the test loop scores and writes the COCO result files.
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    root = data_root.rstrip('/') + '/'
    for loader in ('train_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = root
    # One CocoMetric per IoU type: CocoMetric names its per-class results '<class>_precision' for bbox and segm
    # alike, so with metric=['bbox', 'segm'] the segm values would replace the bbox ones. The first writes
    # results.bbox.json and results.segm.json.
    ann_file = root + 'annotations/instances_val.json'
    cfg.test_evaluator = [
        dict(type='CocoMetric', ann_file=ann_file, metric='bbox', classwise=True, prefix='bbox',
             outfile_prefix=osp.join(work_dir, 'results')),
        dict(type='CocoMetric', ann_file=ann_file, metric='segm', classwise=True, prefix='segm')]
    if args.iters is not None:
        cfg.train_cfg.max_iters = args.iters
        for scheduler in cfg.param_scheduler:
            scheduler.end = min(scheduler.end, args.iters)
            if 'milestones' in scheduler:
                scheduler.milestones = [m for m in scheduler.milestones if m < args.iters]
        cfg.default_hooks.checkpoint.interval = args.iters
    cfg.default_hooks.visualization = dict(type='DetVisualizationHook', draw=False)
    return cfg


class _Progress(Hook):
    """Prints one line every ``every`` iterations to the real stdout; keeps the test loop's data samples."""
    priority = 'LOWEST'

    def __init__(self, out, every: int, total: int):
        self.out, self.every, self.total, self.start = out, every, total, time.time()
        self.samples = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        done = runner.iter + 1
        if done % self.every == 0 or done == self.total:
            loss = runner.message_hub.get_scalar('train/loss').current()
            print(f'    iter {done:4d}/{self.total}  loss {loss:6.3f}  ({time.time() - self.start:4.0f} s)',
                  file=self.out, flush=True)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.samples.extend(sample.cpu() for sample in outputs)  # ground truth and predictions of each image


def train_and_test(cfg, out):
    """Train, run the test loop once; Runner chatter goes to ``<work_dir>/runner.log``.

    Returns (the test metrics, the test loop's data samples)."""
    import mmdualvit  # noqa: F401  (registers our modules, makes mmdualvit.* config types resolvable)
    from mmdualvit.engine.launch import build_runner
    os.makedirs(cfg.work_dir, exist_ok=True)
    progress = _Progress(out, every=cfg.get('_progress_every', 50), total=cfg.train_cfg.max_iters)
    with open(osp.join(cfg.work_dir, 'runner.log'), 'w') as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        runner = build_runner(cfg)
        runner.register_hook(progress)
        runner.train()
        metrics = runner.test()
    return metrics, progress.samples


def ap_table(metrics: dict, classes) -> dict:
    """``{iou_type: {'mAP', 'AP50', 'AP75', <class>: AP}}`` from the two CocoMetrics' results."""
    table = {}
    for iou_type in ('bbox', 'segm'):
        if not any(key.startswith(iou_type + '/') for key in metrics):
            # CocoMetric returns nothing for an IoU type when the model detected nothing at all: AP 0.
            table[iou_type] = dict.fromkeys(['mAP', 'AP50', 'AP75', *classes], 0.0)
            continue
        row = {name: metrics[f'{iou_type}/{iou_type}_{key}'] for name, key in
               [('mAP', 'mAP'), ('AP50', 'mAP_50'), ('AP75', 'mAP_75')]}
        table[iou_type] = dict(row, **{c: metrics[f'{iou_type}/{c}_precision'] for c in classes})
    return table


def _upscaled(instances, factors, shape):
    """``instances`` (boxes, labels, masks, scores if any) drawn on an image of ``shape`` (H, W): boxes scaled by
    ``factors`` (x, y), masks resized."""
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    masks = instances.masks
    masks = masks.to_ndarray() if isinstance(masks, BitmapMasks) else masks.numpy().astype(np.uint8)
    scaled = InstanceData(bboxes=instances.bboxes * instances.bboxes.new_tensor(list(factors) * 2),
                          labels=instances.labels, masks=BitmapMasks(masks, *masks.shape[1:]).resize(shape))
    if 'scores' in instances:
        scaled.scores = instances.scores
    return scaled


def draw_pictures(samples, classes, out_dir: str):
    """One ``ground truth | prediction`` picture per val image and a contact sheet of all of them.

    mmdet's DetLocalVisualizer draws at the image's own size and without titles; its labels are unreadable on a
    128-px image, so each image and its instances are upscaled ``UPSCALE`` times first, and the same visualizer
    writes a title strip above the pair. Returns (picture sizes, sheet path)."""
    import cv2
    import mmcv
    from mmdet.structures import DetDataSample
    from mmdet.visualization import DetLocalVisualizer
    palette = [COLOURS[name] for name in classes]
    visualizer = DetLocalVisualizer(name='mmdualvit_demo', bbox_color=palette, mask_color=palette,
                                    text_color=(255, 255, 255), line_width=2, alpha=0.6)
    visualizer.dataset_meta = dict(classes=classes, palette=palette)
    os.makedirs(out_dir, exist_ok=True)
    pictures = []
    with warnings.catch_warnings():
        # mmengine warns about every box that touches the right or bottom edge (x2 = width is a valid mmdet box).
        warnings.filterwarnings('ignore', message='Warning: The (bbox|polygon) is out of bounds')
        # DetLocalVisualizer jitters each mask's colour with numpy's global RNG: seeded, every run draws the same.
        np.random.seed(SEED)
        for sample in sorted(samples, key=lambda s: s.img_path):
            image = mmcv.imread(sample.img_path, channel_order='rgb')
            shape = (image.shape[0] * UPSCALE, image.shape[1] * UPSCALE)
            # Ground truth is in the test pipeline's resized frame, predictions in the original image's.
            scale_y, scale_x = (s / g for s, g in zip(shape, sample.img_shape))
            shown = DetDataSample(
                gt_instances=_upscaled(sample.gt_instances, (scale_x, scale_y), shape),
                pred_instances=_upscaled(sample.pred_instances[sample.pred_instances.scores > SCORE_THR],
                                         (UPSCALE, UPSCALE), shape))
            visualizer.add_datasample('demo', mmcv.imresize(image, shape[::-1], interpolation='nearest'), shown,
                                      pred_score_thr=SCORE_THR)
            drawn = visualizer.get_image()  # ground truth left, prediction right
            visualizer.set_image(np.full((TITLE_HEIGHT, drawn.shape[1], 3), 255, np.uint8))
            visualizer.draw_texts(['ground truth', f'prediction (score > {SCORE_THR})'],
                                  np.array([[6, 4], [shape[1] + 6, 4]]), font_sizes=14, colors='black')
            picture = np.concatenate([visualizer.get_image(), drawn])
            name = osp.splitext(osp.basename(sample.img_path))[0] + '.png'
            mmcv.imwrite(picture[..., ::-1], osp.join(out_dir, name))
            pictures.append(picture)
    # JPEG: the toy images' pixel noise makes a PNG of the sheet ~1 MB.
    sheet_path = osp.join(osp.dirname(out_dir), 'contact_sheet.jpg')
    mmcv.imwrite(contact_sheet(pictures)[..., ::-1], sheet_path, params=[cv2.IMWRITE_JPEG_QUALITY, 88])
    return [p.shape[1::-1] for p in pictures], sheet_path


def contact_sheet(pictures, columns: int = 4, scale: float = 0.5, gap: int = 10) -> np.ndarray:
    """All pictures in a grid, each shrunk by ``scale`` (a 128-px image shows at 1.5x its size)."""
    import mmcv
    tiles = [mmcv.imrescale(p, scale, interpolation='lanczos') for p in pictures]
    th, tw = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * th + (rows + 1) * gap, columns * tw + (columns + 1) * gap, 3), 235, np.uint8)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, columns)
        top, left = gap + r * (th + gap), gap + c * (tw + gap)
        sheet[top:top + th, left:left + tw] = tile
    return sheet


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    out = sys.stdout
    from mmdualvit.datasets.toy import make_toy_coco
    print('mmdualvit demo: Mask R-CNN + Dual-ViT (narrow, trained from scratch) on toy COCO shapes, on CPU')
    info = make_toy_coco(args.data_root)
    classes = list(info['classes'])
    print(f"1. data      {args.data_root}: {info['train']['num_images']} train / {info['val']['num_images']} val "
          f"images of {', '.join(classes)} (generated, seed 0)")
    cfg = build_config(args, args.data_root, args.work_dir)
    cfg._progress_every = args.progress_every
    total = cfg.train_cfg.max_iters
    print(f'2. training  {total} iterations, batch {cfg.train_dataloader.batch_size}, seed {SEED}, deterministic '
          f'(Runner log: {osp.join(args.work_dir, "runner.log")})', flush=True)
    metrics, samples = train_and_test(cfg, out)
    prefix = osp.join(args.work_dir, 'results')
    print(f'3. testing   {len(samples)} val images, results in {prefix}.{{bbox,segm}}.json')
    table = ap_table(metrics, classes)
    print('\n   COCO AP on the toy val split        bbox    segm')
    rows = [('mAP (IoU .50:.95)', 'mAP'), ('AP50', 'AP50'), ('AP75', 'AP75')]
    rows += [(f'AP of {name}', name) for name in classes]
    for title, key in rows:
        print(f"   {title:<34}{table['bbox'][key]:6.3f}  {table['segm'][key]:6.3f}")
    with open(osp.join(args.work_dir, 'metrics.json'), 'w') as f:
        json.dump(table, f, indent=1)
    pictures = osp.join(args.work_dir, 'predictions')
    sizes, sheet = draw_pictures(samples, classes, pictures)
    width, height = sizes[0]
    print(f'\n4. pictures  {pictures}/*.png: {len(sizes)} pictures of {width}x{height} px '
          f'(left ground truth, right prediction, {UPSCALE}x upscaled)')
    print(f'            contact sheet of all val images: {sheet}')
    minutes, seconds = divmod(round(time.time() - start), 60)
    print(f'done in {minutes} min {seconds} s')


if __name__ == '__main__':
    main()
