"""Predict on your own image with a detection or segmentation config; write the picture and the raw results.

    python tools/infer.py IMAGE CONFIG CHECKPOINT [--out-dir outputs] [--device cpu] [--score-thr 0.3]
    python tools/infer.py IMAGE CONFIG --random-weights ...     # untrained model: checks the pipeline only

A thin wrapper over mmdet's ``DetInferencer`` (configs with ``default_scope = 'mmdet'``) and mmseg's
``MMSegInferencer`` (``'mmseg'``). Written into OUT_DIR, named after the image:

- detection: ``vis/NAME.jpg`` (boxes, masks, labels) and ``preds/NAME.json`` (``labels``, ``scores``,
  ``bboxes`` as x1, y1, x2, y2 in image pixels, ``masks`` as COCO RLE for instance segmentation);
- segmentation: ``vis/NAME.jpg`` (the class colours over the image) and ``pred/NAME_pred.png`` (one class index
  per pixel, the image's size).

The checkpoint is read as ``tools/test.py`` reads it: ``weights_only`` unless ``--trust-checkpoint``, and every
tensor must match the model (``--allow-partial-load`` to relax). Class names and colours come from the checkpoint
(``dataset_meta`` of files written by ``tools/train.py``, ``CLASSES`` / ``PALETTE`` of mmdet 2.x / mmseg 0.x files
such as the authors' trained models), else from the config's test dataset (its ``metainfo``, else its type's: COCO
or ADE20K names).
"""
import argparse
import importlib
import os
import os.path as osp
import sys
import warnings

import mmcv
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope

import mmdualvit  # noqa: F401  (registers our models and the weights_only allow-list)
from mmdualvit.checkpoint import CheckpointError, load_checkpoint_weights, read_checkpoint
from mmdualvit.engine.launch import require_checkpoint_or_random
from mmdualvit.fileio import unwritable_reason

TASKS = {'mmdet': 'detection', 'mmseg': 'segmentation'}
MAX_PIXELS = 50e6


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image', help='image file (anything OpenCV reads: JPEG, PNG, BMP, TIFF ...)')
    parser.add_argument('config', help='a detection (mmdet) or segmentation (mmseg) config, e.g. '
                                       'configs/maskrcnn_dualvit_s_coco.py')
    parser.add_argument('checkpoint', nargs='?', help='trained weights for the config (tools/train.py writes them)')
    parser.add_argument('--out-dir', default='outputs', help='where the picture and the results go (default: outputs)')
    parser.add_argument('--random-weights', action='store_true',
                        help='no checkpoint: run the untrained model (its predictions are noise; for checking the '
                             'pipeline only)')
    parser.add_argument('--device', help='cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw only boxes scoring at least this (default 0.3; the json keeps all)')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle the checkpoint fully (weights_only=False): only for files you trust')
    parser.add_argument('--allow-partial-load', action='store_true',
                        help='load a checkpoint whose tensors do not all match the model (warns instead of failing)')
    parser.add_argument('--max-pixels', type=float, default=MAX_PIXELS,
                        help='refuse larger images before decoding them (default 5e7, i.e. 50 megapixels; a small '
                             'compressed file can decode to gigabytes)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings, key=value')
    return parser, parser.parse_args(argv)


def image_size(path):
    """(width, height) from the image file's header, without decoding its pixels; None where Pillow cannot tell
    (OpenCV may still read it). Pillow's own decompression-bomb limit is lifted here: this tool names its own."""
    from PIL import Image
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # noqa: BLE001  (Pillow raises several types for files it does not know)
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def check_inputs(parser, args):
    """Stop with exit status 2 and a message naming the problem and the fix; return the config."""
    if not osp.isfile(args.image):
        parser.error(f'image file {args.image!r} does not exist')
    reason = unwritable_reason(args.out_dir)
    if reason:
        parser.error(f'--out-dir {args.out_dir!r} cannot hold the results: {reason}; choose another folder')
    size = image_size(args.image)
    if size is not None and size[0] * size[1] > args.max_pixels:
        width, height = size
        parser.error(f'{args.image!r} is {width}x{height} pixels ({width * height / 1e6:.3g} megapixels), over the '
                     f'--max-pixels limit of {args.max_pixels / 1e6:g} megapixels: decoding it alone takes '
                     f'{width * height * 3 / 2**30:.1f} GiB. Downscale the image, or raise --max-pixels if this '
                     'machine has the memory for it and the model')
    try:
        readable = mmcv.imread(args.image) is not None
    except Exception:  # noqa: BLE001  (OpenCV raises several types for damaged files; all mean "cannot read")
        readable = False
    if not readable:
        parser.error(f'cannot read {args.image!r} as an image: give a JPEG, PNG, BMP or TIFF file')
    if not osp.isfile(args.config):
        parser.error(f'config file {args.config!r} does not exist')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        parser.error(f'{args.config} is a config for {scope or "no OpenMMLab task"} (default_scope); tools/infer.py '
                     'runs detection (mmdet) and segmentation (mmseg) configs. For an ImageNet classifier use '
                     "mmpretrain's ImageClassificationInferencer, or tools/test.py to evaluate it")
    require_checkpoint_or_random(parser, args, 'Without trained weights the model predicts noise',
                                 'run the untrained model')
    return cfg


def config_dataset_meta(cfg):
    """Class names (and palette) of the config's test dataset: its ``metainfo`` over its class's ``METAINFO`` (e.g.
    the 80 COCO or 150 ADE20K names)."""
    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    meta = {}
    datasets = importlib.import_module(f'{cfg.default_scope}.registry').DATASETS  # mmdet's or mmseg's own
    dataset_class = datasets.get(dataset['type']) if isinstance(dataset.get('type'), str) else None
    meta.update(getattr(dataset_class, 'METAINFO', {}))
    meta.update(dataset.get('metainfo') or {})
    return meta


def checkpoint_dataset_meta(checkpoint):
    """Class names (and palette) a checkpoint carries: ``meta.dataset_meta`` (mmengine runners), or ``meta.CLASSES``
    and ``meta.PALETTE`` (mmcv 1.x runners of mmdet 2.x / mmseg 0.x, e.g. the authors' trained models)."""
    meta = checkpoint.get('meta') or {}
    if meta.get('dataset_meta'):
        return dict(meta['dataset_meta'])
    found = {key.lower(): meta[key] for key in ('CLASSES', 'PALETTE') if meta.get(key) is not None}
    return {key: tuple(value) if key == 'classes' else value for key, value in found.items()}


def build_inferencer(cfg, scope, device):
    """mmdet's or mmseg's inferencer with the model as built (weights are loaded by :func:`load_weights`)."""
    with warnings.catch_warnings():
        # "Checkpoint is not loaded ... randomly initialized" and "use COCO/cityscapes classes": main() loads the
        # weights and sets the classes itself, and says so when there are no weights.
        warnings.filterwarnings('ignore', message=r'(Checkpoint is not loaded|weights is None)')
        if scope == 'mmdet':
            from mmdet.apis import DetInferencer
            return DetInferencer(cfg, device=device)
        from mmseg.apis import MMSegInferencer
        return MMSegInferencer(cfg, device=device)


def load_weights(inferencer, cfg, checkpoint, checkpoint_file, strict):
    """Load ``checkpoint`` (read from ``checkpoint_file``; None: keep the untrained model) into the inferencer's
    model, strictly unless told otherwise; set its classes and colours."""
    meta = config_dataset_meta(cfg)
    if checkpoint is not None:
        load_checkpoint_weights(inferencer.model, checkpoint, checkpoint_file, strict)
        meta.update(checkpoint_dataset_meta(checkpoint))
    meta = {key.lower(): value for key, value in meta.items()}
    if 'classes' not in meta:
        raise CheckpointError(f'no class names in {checkpoint_file or "the config"}: set '
                              'test_dataloader.dataset.metainfo.classes in the config')
    inferencer.model.dataset_meta = meta
    if cfg.default_scope == 'mmseg':
        inferencer.visualizer.set_dataset_meta(meta['classes'], meta.get('palette'))
    else:
        inferencer.visualizer.dataset_meta = meta


def main(argv=None):
    parser, args = parse_args(argv)
    cfg = check_inputs(parser, args)
    init_default_scope(cfg.default_scope)
    try:
        # read before the model is built: a missing or unsafe file fails fast
        checkpoint = read_checkpoint(args.checkpoint, trust=args.trust_checkpoint) if args.checkpoint else None
        inferencer = build_inferencer(cfg, cfg.default_scope, args.device)
        load_weights(inferencer, cfg, checkpoint, args.checkpoint, strict=not args.allow_partial_load)
    except CheckpointError as error:
        parser.error(str(error))
    if args.random_weights:
        print('WARNING: --random-weights: the model is UNTRAINED, its predictions are random noise. Use this only '
              'to check the pipeline; pass a checkpoint for real predictions.', file=sys.stderr)
    os.makedirs(args.out_dir, exist_ok=True)
    kwargs = dict(pred_score_thr=args.score_thr, no_save_pred=False) if cfg.default_scope == 'mmdet' else {}
    inferencer(args.image, out_dir=args.out_dir, **kwargs)
    print(f'{TASKS[cfg.default_scope]} of {args.image} written to {args.out_dir}/ (the picture in vis/, the raw '
          f'results in {"preds" if cfg.default_scope == "mmdet" else "pred"}/)')


if __name__ == '__main__':
    main()
