"""Export a config's model (or its backbone) to ONNX and keep the file only if onnxruntime reproduces PyTorch.

    python tools/deployment/export_onnx.py CONFIG [CHECKPOINT] --shape H W [--dynamic] [--backbone-only] \
        --out FILE.onnx [--cfg-options KEY=VALUE ...]

The graph's input is the preprocessed tensor (normalised, padded as the config's data preprocessor pads: a
multiple of 32 for detectors). Single-stage detectors export up to their head outputs, segmentors to their logits,
classifiers to their logits; detectors with a RoI stage export backbone + neck (see mmdualvit/deployment.py).
The file is run with onnxruntime on the export input (and, with --dynamic, on a second size) and compared with
PyTorch; if any output differs by more than the tolerance the file is deleted and the exit status is 1.
Without CHECKPOINT the weights are random: the export is then a structure check only.
"""
import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mmengine.config import DictAction  # noqa: E402

from mmdualvit.deployment import (TOLERANCE, ExportError, ExportWrapper, build_model, describe,  # noqa: E402
                                  export_onnx, second_shape, verify_onnx)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file (or a package config such as mmdet::...)')
    parser.add_argument('checkpoint', nargs='?', help='whole-model checkpoint (with --backbone-only, an ImageNet '
                        'checkpoint works too); random weights without one')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'), help='input height, width')
    parser.add_argument('--dynamic', action='store_true', help='dynamic input height and width')
    parser.add_argument('--backbone-only', action='store_true', help='export the backbone alone')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--tolerance', type=float, default=TOLERANCE,
                        help='largest accepted max|onnxruntime - PyTorch| / max|PyTorch| per output '
                        f'(default {TOLERANCE})')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if min(args.shape) < 1:
        raise SystemExit(f'--shape needs positive sizes, got {args.shape}')
    model, _ = build_model(args.config, args.checkpoint, args.backbone_only, args.cfg_options)
    if not args.checkpoint:
        print('no CHECKPOINT given: exporting randomly initialised weights (a structure check only)')
    wrapper = ExportWrapper(model, args.backbone_only)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the tracer's warnings about Python values frozen into the graph
            x = export_onnx(wrapper, tuple(args.shape), args.out, dynamic=args.dynamic)
        inputs = [x]
        if args.dynamic:
            import torch
            shape = second_shape(tuple(args.shape))
            inputs.append(torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(1)))
        results = verify_onnx(wrapper, args.out, inputs, args.tolerance)
    except ExportError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    for x, errors in zip(inputs, results):
        print(f'onnxruntime matches PyTorch at {tuple(x.shape)}: {len(errors)} outputs, {describe(errors)}, '
              f'tolerance {args.tolerance:.0e}')
    print(f'wrote {args.out} ({wrapper.kind}: {", ".join(wrapper.output_names)})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
