"""The main job (`make demo`): train Mask R-CNN + Dual-ViT on the toy COCO shapes on CPU, evaluate once, draw.

    python tools/demo.py                      # 300 iterations, work dir work_dirs/demo
    python tools/demo.py --iters 20 --work-dir /tmp/demo

Prints a short story (data, a progress line every 50 iterations, one results table) and writes the full logs,
the COCO result files, one labelled picture per validation image and a contact sheet into the work dir. The seed
is fixed and mmengine's deterministic mode is on, so one machine prints the same numbers on every run.
"""
import argparse
import contextlib
import io
import json
import os
import os.path as osp
import sys
import time
import warnings
from pathlib import Path

# Run from a checkout without installing: the repository root is one level above tools/.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# mmengine imports pkg_resources, which setuptools >= 81 marks deprecated: noise for a demo's reader.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

import numpy as np  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

CONFIG = ROOT / 'configs' / 'toy' / 'maskrcnn_dualvit_toy.py'
SEED = 0
SCORE_THR = 0.5  # predictions drawn in the pictures (the mAP uses all of them)
UPSCALE = 3  # 128-px toy images become 384-px panels
# Bright overlay colours that none of the toy shapes' own colours resemble.
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
    """The toy config with the demo's settings: seeded, deterministic, no validation loop, one COCO-format dump."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(CONFIG))
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=SEED, deterministic=True)
    cfg.launcher = 'none'
    # Evaluate once, after training: no validation loop (the train loop would otherwise evaluate at its last
    # iteration), and the test loop only writes COCO result files, which main() scores with pycocotools.
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.train_cfg.val_interval = 10**9
    root = data_root.rstrip('/') + '/'
    for loader in ('train_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = root
    cfg.test_evaluator = dict(type='CocoMetric', ann_file=root + 'annotations/instances_val.json',
                              metric=['bbox', 'segm'], format_only=True,
                              outfile_prefix=osp.join(work_dir, 'results'))
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
    """Prints one line every ``every`` iterations to the real stdout; keeps the test loop's predictions."""
    priority = 'LOWEST'

    def __init__(self, out, every: int, total: int):
        self.out, self.every, self.total, self.start = out, every, total, time.time()
        self.predictions = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        done = runner.iter + 1
        if done % self.every == 0 or done == self.total:
            loss = runner.message_hub.get_scalar('train/loss').current()
            print(f'    iter {done:4d}/{self.total}  loss {loss:6.3f}  ({time.time() - self.start:4.0f} s)',
                  file=self.out, flush=True)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        for sample in outputs:
            self.predictions.append((sample.img_path, sample.pred_instances.cpu()))


def train_and_predict(cfg, out):
    """Train, run the test loop once; Runner chatter goes to ``<work_dir>/runner.log``. Returns predictions."""
    from mmengine.runner import Runner
    import mmdualvit  # noqa: F401  (registers our modules, makes mmdualvit.* config types resolvable)
    os.makedirs(cfg.work_dir, exist_ok=True)
    total = cfg.train_cfg.max_iters
    progress = _Progress(out, every=cfg.get('_progress_every', 50), total=total)
    with open(osp.join(cfg.work_dir, 'runner.log'), 'w') as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        runner = Runner.from_cfg(cfg)
        runner.register_hook(progress)
        runner.train()
        runner.test()
    return progress.predictions


def evaluate(ann_file: str, prefix: str, classes):
    """COCO AP of the written result files, overall and per class, for bbox and segm (pycocotools, once each)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    table = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its 12-line summary and index chatter
        gt = COCO(ann_file)
        for iou_type in ('bbox', 'segm'):
            results = json.loads(Path(f'{prefix}.{iou_type}.json').read_text())
            if iou_type == 'segm':
                for r in results:  # score segm areas by mask, not box (as mmdet's CocoMetric does)
                    r.pop('bbox', None)
            if not results:
                table[iou_type] = dict(mAP=0.0, AP50=0.0, AP75=0.0, **{c: 0.0 for c in classes})
                continue
            coco_eval = COCOeval(gt, gt.loadRes(results), iou_type)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            row = dict(mAP=coco_eval.stats[0], AP50=coco_eval.stats[1], AP75=coco_eval.stats[2])
            precision = coco_eval.eval['precision']  # (iou, recall, class, area, max dets)
            for index, cat_id in enumerate(coco_eval.params.catIds):
                name = gt.cats[cat_id]['name']
                values = precision[:, :, index, 0, -1]
                row[name] = float(values[values > -1].mean()) if (values > -1).any() else float('nan')
            table[iou_type] = row
    return table


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _label(draw, xy, text, colour, font, bounds):
    """Text on a filled box, shifted so that it stays inside ``bounds`` (x0, y0, x1, y1)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 6, bottom - top + 4
    x = min(max(xy[0], bounds[0]), bounds[2] - w)
    y = xy[1] - h if xy[1] - h >= bounds[1] else xy[1]
    y = min(y, bounds[3] - h)
    draw.rectangle((x, y, x + w, y + h), fill=colour)
    draw.text((x + 3 - left, y + 2 - top), text, fill=(0, 0, 0), font=font)


def _panel(image: np.ndarray, instances, title: str, font, title_font) -> Image.Image:
    """One upscaled, titled panel: masks blended, boxes and ``class score`` labels drawn inside the image."""
    scale = UPSCALE
    base = image.astype(np.float32)
    for inst in instances:
        colour = np.array(COLOURS.get(inst['name'], (200, 200, 0)), np.float32)
        mask = inst['mask'].astype(bool)
        base[mask] = 0.55 * base[mask] + 0.45 * colour
    h, w = image.shape[:2]
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8)).resize((w * scale, h * scale), Image.NEAREST)
    title_h = 28
    panel = Image.new('RGB', (w * scale, h * scale + title_h), (255, 255, 255))
    panel.paste(img, (0, title_h))
    draw = ImageDraw.Draw(panel)
    draw.text((6, 4), title, fill=(0, 0, 0), font=title_font)
    bounds = (0, title_h, w * scale, h * scale + title_h)
    for inst in instances:
        x0, y0, x1, y1 = [v * scale for v in inst['bbox']]
        colour = COLOURS.get(inst['name'], (200, 200, 0))
        draw.rectangle((x0, y0 + title_h, x1, y1 + title_h), outline=colour, width=3)
        text = inst['name'] if inst.get('score') is None else f"{inst['name']} {inst['score']:.2f}"
        _label(draw, (x0, y0 + title_h), text, colour, font, bounds)
    return panel


def draw_pictures(predictions, ann_file: str, out_dir: str):
    """One ``ground truth | prediction`` picture per val image and a contact sheet of all of them."""
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
    names = {c['id']: c['name'] for c in gt.loadCats(gt.getCatIds())}
    classes = [names[k] for k in sorted(names)]
    by_file = {img['file_name']: img for img in gt.loadImgs(gt.getImgIds())}
    font, title_font = _font(14), _font(18)
    os.makedirs(out_dir, exist_ok=True)
    pairs = []
    for img_path, pred in sorted(predictions, key=lambda p: p[0]):
        info = by_file[osp.basename(img_path)]
        image = np.asarray(Image.open(img_path).convert('RGB'))
        truth = []
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=info['id'])):
            x, y, w, h = ann['bbox']
            truth.append(dict(name=names[ann['category_id']], mask=gt.annToMask(ann), bbox=(x, y, x + w, y + h)))
        keep = pred.scores >= SCORE_THR
        shown = [dict(name=classes[int(label)], score=float(score), mask=mask.numpy(), bbox=box.tolist())
                 for label, score, mask, box in zip(pred.labels[keep], pred.scores[keep], pred.masks[keep],
                                                    pred.bboxes[keep])]
        left = _panel(image, truth, 'ground truth', font, title_font)
        right = _panel(image, shown, f'prediction (score >= {SCORE_THR})', font, title_font)
        pair = Image.new('RGB', (left.width + right.width + 8, left.height), (255, 255, 255))
        pair.paste(left, (0, 0))
        pair.paste(right, (left.width + 8, 0))
        pair.save(osp.join(out_dir, osp.splitext(info['file_name'])[0] + '.png'))
        pairs.append(pair)
    # JPEG: the toy images' pixel noise makes a PNG of the sheet ~1 MB.
    sheet_path = osp.join(osp.dirname(out_dir), 'contact_sheet.jpg')
    contact_sheet(pairs).save(sheet_path, quality=88)
    return [p.size for p in pairs], sheet_path


def contact_sheet(pairs, columns: int = 4, scale: float = 0.5) -> Image.Image:
    """All pictures in a grid, each shrunk by ``scale`` (a 128-px image shows at 1.5x its size)."""
    tiles = [p.resize((round(p.width * scale), round(p.height * scale)), Image.LANCZOS) for p in pairs]
    tw, th = tiles[0].size
    rows = -(-len(tiles) // columns)
    gap = 10
    sheet = Image.new('RGB', (columns * tw + (columns + 1) * gap, rows * th + (rows + 1) * gap), (235, 235, 235))
    for index, tile in enumerate(tiles):
        r, c = divmod(index, columns)
        sheet.paste(tile, (gap + c * (tw + gap), gap + r * (th + gap)))
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
    predictions = train_and_predict(cfg, out)
    prefix = osp.join(args.work_dir, 'results')
    print(f'3. testing   {len(predictions)} val images, results in {prefix}.{{bbox,segm}}.json')
    table = evaluate(info['val']['ann_file'], prefix, classes)
    print('\n   COCO AP on the toy val split        bbox    segm')
    rows = [('mAP (IoU .50:.95)', 'mAP'), ('AP50', 'AP50'), ('AP75', 'AP75')]
    rows += [(f'AP of {name}', name) for name in classes]
    for title, key in rows:
        print(f"   {title:<34}{table['bbox'][key]:6.3f}  {table['segm'][key]:6.3f}")
    with open(osp.join(args.work_dir, 'metrics.json'), 'w') as f:
        json.dump(table, f, indent=1)
    pictures = osp.join(args.work_dir, 'predictions')
    sizes, sheet = draw_pictures(predictions, info['val']['ann_file'], pictures)
    width, height = sizes[0]
    print(f'\n4. pictures  {pictures}/*.png: {len(sizes)} pictures of {width}x{height} px '
          f'(left ground truth, right prediction, {UPSCALE}x upscaled)')
    print(f'            contact sheet of all val images: {sheet}')
    minutes, seconds = divmod(round(time.time() - start), 60)
    print(f'done in {minutes} min {seconds} s')


if __name__ == '__main__':
    main()
