"""Dual-ViT-S backbone: fused attention (scaled_dot_product_attention) vs the official explicit softmax(QKᵀ)V.

Forward and forward+backward latency (median of --runs after a warm-up) and peak memory, both paths measured in one
run on the same machine. Each measurement runs in a fresh process so that peak memory is its own: CUDA max
allocated on GPU, peak RSS above the process's state after building the model and input on CPU.

    python tools/analysis/benchmark_dualvit_attention.py [--sizes 800x1344 512x512] [--runs 3] [--with-cp]
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from mmdualvit.models import DualViT


def _current_rss() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def worker(impl: str, size, mode: str, runs: int, device: str) -> dict:
    torch.manual_seed(0)
    model = DualViT(arch='s', fused_attention=impl != 'explicit', with_cp=impl == 'fused+cp').to(device)
    x = torch.randn(1, 3, *size, device=device)
    train = mode == 'fwd+bwd'
    model.train(train)

    def step():
        if train:
            outs = model(x)
            sum(o.float().mean() for o in outs).backward()
        else:
            with torch.no_grad():
                model(x)
        if device == 'cuda':
            torch.cuda.synchronize()

    idle_rss = _current_rss()
    step()  # warm-up
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = idle_rss
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device == 'cuda':
        peak = torch.cuda.max_memory_allocated() - base
    else:  # peak RSS of the whole process minus its RSS once model and input existed
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - idle_rss
    return dict(median_s=statistics.median(times), min_s=min(times), max_s=max(times), peak_bytes=peak,
                base_bytes=base)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--sizes', nargs='+', default=['800x1344', '512x512'])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--with-cp', action='store_true',
                        help='also measure fused attention with gradient checkpointing (forward+backward rows)')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--worker', nargs=3, metavar=('IMPL', 'SIZE', 'MODE'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, size, mode = args.worker
        print(json.dumps(worker(impl, tuple(map(int, size.split('x'))), mode, args.runs, args.device)))
        return
    rows = []
    for size in args.sizes:
        for mode in ('fwd', 'fwd+bwd'):
            result = {}
            impls = ('fused', 'explicit') + (('fused+cp', ) if args.with_cp and mode == 'fwd+bwd' else ())
            for impl in impls:
                out = subprocess.run([sys.executable, __file__, '--runs', str(args.runs), '--device', args.device,
                                      '--worker', impl, size, mode], capture_output=True, text=True)
                if out.returncode != 0:
                    result[impl] = dict(error=out.stderr.strip().splitlines()[-1][:200])
                else:
                    result[impl] = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(dict(size=size, mode=mode, **result))
            f, e = result['fused'], result['explicit']
            if 'error' in f or 'error' in e:
                print(f'{size:>9} {mode:8} fused: {f} explicit: {e}')
                continue
            print(f"{size:>9} {mode:8} latency fused {f['median_s']:.2f}s explicit {e['median_s']:.2f}s "
                  f"ratio {f['median_s'] / e['median_s']:.2f} | peak memory fused {f['peak_bytes'] / 2**30:.2f} GiB "
                  f"explicit {e['peak_bytes'] / 2**30:.2f} GiB ratio {f['peak_bytes'] / e['peak_bytes']:.2f}")
            if 'fused+cp' in result and 'error' not in result['fused+cp']:
                c = result['fused+cp']
                print(f"{'':>9} {'':8} with_cp: latency {c['median_s']:.2f}s ({c['median_s'] / f['median_s']:.2f}x "
                      f"fused), peak memory {c['peak_bytes'] / 2**30:.2f} GiB "
                      f"({f['peak_bytes'] / c['peak_bytes']:.1f}x less than fused)")
    if args.json:
        with open(args.json, 'w') as fh:
            json.dump(dict(device=args.device, rows=rows), fh, indent=1)


if __name__ == '__main__':
    main()
