"""Whole-model benchmark of detectors/segmentors side by side: params, GMACs, latency, training step, peak memory.

    python tools/analysis/benchmark.py configs/maskrcnn_dualvit_s_coco.py \
        mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py \
        --shape 800 1344 --runs 3 --out work_dirs/benchmark

Each config is measured in a fresh process (so peak memory is its own): parameters and GMACs (mmengine's analyzer
plus LSTM and fused-attention handles), inference latency (``mode='predict'``), training-step latency (loss,
backward, AdamW step), each the median of ``--runs`` after a warm-up, and peak memory of the training step (CUDA
max allocated on GPU; peak RSS above the idle process on CPU). Results are printed as a table with ratios against
the ``--baseline`` row and written as JSON and CSV.
"""
import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _rss() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(config: str, shape, batch: int, runs: int, device: str, amp: bool) -> dict:
    """All figures for one config (runs in the worker process)."""
    import torch

    import mmdualvit  # noqa: F401
    from mmdualvit.analysis import build_from_config, model_complexity, synthetic_batch

    model, cfg = build_from_config(config)
    if cfg.default_scope == 'mmseg' and batch < 2:
        raise ValueError('mmseg decode heads with BatchNorm need at least 2 images per training step; '
                         'pass --batch 2 for segmentation configs.')
    if cfg.default_scope == 'mmseg':
        model.data_preprocessor.size = tuple(shape)  # measure at --shape, not padded to the config's crop size
    macs, params = model_complexity(model.eval(), shape)
    model.to(device)
    data = synthetic_batch(cfg, tuple(shape), batch)
    autocast = torch.autocast(device, dtype=torch.bfloat16 if device == 'cpu' else torch.float16, enabled=amp)

    def sync():
        if device == 'cuda':
            torch.cuda.synchronize()

    def infer():
        with torch.no_grad(), autocast:
            model(**model.data_preprocessor(data, False), mode='predict')
        sync()

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step():
        with autocast:
            losses = model(**model.data_preprocessor(data, True), mode='loss')
        loss, _ = model.parse_losses(losses)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()

    def timed(fn):
        fn()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times), min(times), max(times)

    model.eval()
    infer_t = timed(infer)
    model.train()
    idle = _rss()
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        idle = torch.cuda.memory_allocated()
    train_t = timed(train_step)
    if device == 'cuda':
        peak = torch.cuda.max_memory_allocated() - idle
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - idle
    return dict(config=config, params_m=params / 1e6, gmacs=macs / 1e9, infer_s=infer_t[0], infer_min_s=infer_t[1],
                infer_max_s=infer_t[2], train_s=train_t[0], train_min_s=train_t[1], train_max_s=train_t[2],
                train_peak_gib=peak / 2**30)


COLUMNS = [('params_m', 'params (M)'), ('gmacs', 'GMACs'), ('infer_s', 'inference (s)'),
           ('train_s', 'train step (s)'), ('train_peak_gib', 'train peak mem (GiB)')]


def table(rows, baseline: int) -> str:
    """Markdown table: each figure with its ratio to the baseline row."""
    base = rows[baseline]
    lines = ['| config | ' + ' | '.join(name for _, name in COLUMNS) + ' |', '|---' * (len(COLUMNS) + 1) + '|']
    for row in rows:
        if 'error' in row:
            lines.append(f"| {row['config']} | error: {row['error']} |")
            continue
        cells = [f'{row[key]:.2f} ({row[key] / base[key]:.2f}x)' if 'error' not in base else f'{row[key]:.2f}'
                 for key, _ in COLUMNS]
        lines.append(f"| {row['config']} | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('configs', nargs='+', help='config files or package configs (mmdet::..., mmseg::...)')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1344], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--amp', action='store_true', help='autocast: fp16 on GPU, bfloat16 on CPU')
    parser.add_argument('--baseline', type=int, default=0, help='index of the row the ratios refer to')
    parser.add_argument('--out', help='folder for benchmark.json and benchmark.csv')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.worker:
        print(json.dumps(measure(args.configs[0], args.shape, args.batch, args.runs, args.device, args.amp)))
        return
    rows = []
    for config in args.configs:
        cmd = [sys.executable, __file__, config, '--worker', '--shape', *map(str, args.shape), '--batch',
               str(args.batch), '--runs', str(args.runs), '--device', args.device] + (['--amp'] if args.amp else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS='ignore'))
        if proc.returncode != 0:
            rows.append(dict(config=config, error=(proc.stderr.strip().splitlines() or ['?'])[-1][:200]))
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"measured {config}: {rows[-1].get('error') or 'ok'}", flush=True)
    header = (f'input {args.shape[0]}x{args.shape[1]}, batch {args.batch}, {args.device}'
              f"{', amp' if args.amp else ''}, median of {args.runs} runs; ratios vs {args.configs[args.baseline]}")
    print(header)
    print(table(rows, args.baseline))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, 'benchmark.json'), 'w') as f:
            json.dump(dict(setting=header, rows=rows), f, indent=1)
        keys = sorted({k for row in rows for k in row})
        with open(os.path.join(args.out, 'benchmark.csv'), 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == '__main__':
    main()
