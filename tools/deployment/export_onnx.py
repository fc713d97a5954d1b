"""Export a config's model (or its backbone) to ONNX and write the file only if onnxruntime reproduces PyTorch.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT --shape H W [--dynamic] [--backbone-only] \
        --out FILE.onnx [--trust-checkpoint] [--cfg-options KEY=VALUE ...]
    python tools/deployment/export_onnx.py CONFIG --random-weights --shape H W --out FILE.onnx   # structure only

The graph's input is the preprocessed tensor (normalised, padded as the config's data preprocessor pads: a
multiple of 32 for detectors). Single-stage detectors export up to their head outputs, segmentors to their logits,
classifiers to their logits; detectors with a RoI stage export backbone + neck (see mmdualvit/deployment.py).
The graph is run with onnxruntime on the export input (and, with --dynamic, on a second size) and compared with
PyTorch; only if every output agrees within the measured float tolerance is FILE.onnx written (exit status 0).
Otherwise nothing is written and the exit status is 1; bad arguments or checkpoints exit with status 2.
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

from mmdualvit.checkpoint import CheckpointError
from mmdualvit.deployment import TOLERANCE, ExportError, ExportWrapper, build_model, describe, export_onnx
from mmdualvit.engine.launch import require_checkpoint_or_random
from mmdualvit.fileio import unwritable_reason


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file (or a package config such as mmdet::...)')
    parser.add_argument('checkpoint', nargs='?', help='whole-model checkpoint (what tools/train.py writes); with '
                        '--backbone-only, an ImageNet checkpoint (official, timm or converted) works too')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
                        help='input height and width (of the preprocessed, padded batch)')
    parser.add_argument('--dynamic', action='store_true', help='dynamic input height and width')
    parser.add_argument('--backbone-only', action='store_true', help='export the backbone alone')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--random-weights', action='store_true',
                        help='no checkpoint: export the untrained model (checks the structure only)')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle the checkpoint fully (weights_only=False): only for files you trust')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser, parser.parse_args(argv)


def check_inputs(parser, args) -> None:
    """Stop with exit status 2 and a message naming the problem and the fix."""
    if min(args.shape) < 1:
        parser.error(f'--shape needs positive sizes, got {args.shape[0]} {args.shape[1]}')
    if '::' not in args.config and not osp.isfile(args.config):
        parser.error(f'config file {args.config!r} does not exist')
    require_checkpoint_or_random(parser, args, 'An export of untrained weights computes noise',
                                 'export the untrained model')
    if not args.out.endswith('.onnx'):
        parser.error(f'--out {args.out!r}: name the file to write, ending in .onnx')
    if osp.isdir(args.out):
        parser.error(f'--out {args.out!r} is a directory; name the .onnx file to write')
    reason = unwritable_reason(osp.dirname(osp.abspath(args.out)))
    if reason:
        parser.error(f'--out {args.out!r} cannot be written: {reason}; choose another path')


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    check_inputs(parser, args)
    try:
        model, _ = build_model(args.config, args.checkpoint, args.backbone_only, args.cfg_options,
                               trust=args.trust_checkpoint)
        wrapper = ExportWrapper(model, args.backbone_only)
    except (CheckpointError, ExportError) as err:
        parser.error(str(err))
    if args.random_weights:
        print('WARNING: --random-weights: the exported model is UNTRAINED (a structure check only).', file=sys.stderr)
    try:
        results = export_onnx(wrapper, tuple(args.shape), args.out, dynamic=args.dynamic)
    except ExportError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    for shape, errors in results:
        print(f'onnxruntime matches PyTorch at {shape}: {len(errors)} outputs, {describe(errors)} '
              f'(tolerance {TOLERANCE:.0e})')
    print(f'wrote {args.out} ({wrapper.kind}: {", ".join(wrapper.output_names)})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
