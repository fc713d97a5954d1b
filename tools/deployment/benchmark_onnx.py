"""CPU latency of onnxruntime against PyTorch eager on the same exported computation, side by side.

    python tools/deployment/benchmark_onnx.py                           # both S backbones + RetinaNet Dual-ViT-S
    python tools/deployment/benchmark_onnx.py --shape 800 1216 --runs 5 --threads 8 \
        --backbones configs/upernet_dualvit_s_ade20k.py --models configs/upernet_dualvit_s_ade20k.py

Each entry is built with random weights (latency does not depend on them), exported at --shape (fixed shape: what
a deployment of one input size uses), checked with onnxruntime like export_onnx.py, then timed: the median of
--runs single-image runs after one warm-up, PyTorch under ``torch.no_grad()`` and onnxruntime's CPU provider, both
with --threads intra-op threads. ``--backbones`` entries time the config's backbone, ``--models`` entries the
exported network (for detectors: up to the head outputs, without box decoding and NMS, on both sides).
The table puts the ratio first: PyTorch ms / onnxruntime ms (above 1: onnxruntime is faster).
"""
import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from mmdualvit.deployment import ExportWrapper, build_model, onnx_session, trace_onnx, verify_onnx

DEFAULT_BACKBONES = ['configs/retinanet_dualvit_s_coco.py', 'configs/retinanet_sequencer2d_s_coco.py']
DEFAULT_MODELS = ['configs/retinanet_dualvit_s_coco.py']


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backbones', nargs='*', default=DEFAULT_BACKBONES, help='configs whose backbone is timed')
    parser.add_argument('--models', nargs='*', default=DEFAULT_MODELS, help='configs whose whole network is timed')
    parser.add_argument('--shape', type=int, nargs=2, default=(512, 512), metavar=('H', 'W'))
    parser.add_argument('--runs', type=int, default=10, help='timed runs per entry (median)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(), help='intra-op threads, both sides')
    parser.add_argument('--out', help='also write the rows as JSON')
    args = parser.parse_args(argv)
    if args.runs < 1 or args.threads < 1:
        parser.error('--runs and --threads need values >= 1')
    return args


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def median_ms(fn, runs: int) -> float:
    """Median milliseconds of ``fn`` over ``runs`` after one warm-up (why not torch.utils.benchmark: see
    ``timed`` in tools/analysis/benchmark.py)."""
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(config: str, backbone_only: bool, args) -> dict:
    model, _ = build_model(config, backbone_only=backbone_only)
    wrapper = ExportWrapper(model, backbone_only)
    model_bytes, x = trace_onnx(wrapper, tuple(args.shape))
    error = max(verify_onnx(wrapper, model_bytes, [x])[0].values())
    session = onnx_session(model_bytes, args.threads)
    feed = {session.get_inputs()[0].name: x.numpy()}

    def eager():
        with torch.no_grad():
            wrapper(x)

    torch_ms = median_ms(eager, args.runs)
    onnx_ms = median_ms(lambda: session.run(None, feed), args.runs)
    name = Path(config).stem + (' (backbone)' if backbone_only else f' ({wrapper.kind})')
    return dict(model=name, shape=list(args.shape), torch_ms=torch_ms, onnx_ms=onnx_ms, ratio=torch_ms / onnx_ms,
                max_error=error)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime
    header = (f'{date.today()} | {cpu_name()}, {os.cpu_count()} CPUs, '
              f'{args.threads} threads | torch {torch.__version__}, onnxruntime {onnxruntime.__version__} | '
              f'input {args.shape[0]}x{args.shape[1]}, median of {args.runs} | '
              f'load average {os.getloadavg()[0]:.1f} at the start')
    print(header, flush=True)
    rows = []
    for config, backbone_only in [(c, True) for c in args.backbones] + [(c, False) for c in args.models]:
        rows.append(measure(config, backbone_only, args))
        print(f'  measured {rows[-1]["model"]}', flush=True)
    print(f'load average {os.getloadavg()[0]:.1f} at the end (a shared machine inflates both columns)')
    print('| PyTorch / onnxruntime | onnxruntime ms | PyTorch ms | model | max error |')
    print('|---|---|---|---|---|')
    for row in rows:
        print(f'| {row["ratio"]:.2f}x | {row["onnx_ms"]:.0f} | {row["torch_ms"]:.0f} | {row["model"]} | '
              f'{row["max_error"]:.1e} |')
    if args.out:
        Path(args.out).write_text(json.dumps(dict(header=header, rows=rows), indent=1))


if __name__ == '__main__':
    main()
