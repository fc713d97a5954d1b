"""Benchmark configs side by side: params, GMACs, latency and peak memory of whole models or of their backbones.

    # whole detectors/segmentors: inference (mode='predict') and a training step (loss, backward, AdamW step)
    python tools/analysis/benchmark.py configs/peers/maskrcnn_pvtv2_b2_coco.py configs/maskrcnn_dualvit_s_coco.py \
        mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py --shape 800 1344 --runs 2 --out work_dirs/benchmark

    # backbones only (forward, forward+backward): KEY=VALUE words after a config are options of that row alone,
    # so one run measures Dual-ViT-S with fused and with explicit attention
    python tools/analysis/benchmark.py --backbone-only --shape 800 1344 --runs 2 \
        configs/maskrcnn_dualvit_s_coco.py configs/maskrcnn_dualvit_s_coco.py model.backbone.fused_attention=False

    # eager and torch.compile'd rows side by side (the backbone compiled, see mmdualvit.models.utils.compile_backbone)
    python tools/analysis/benchmark.py --backbone-only --compile --shape 800 1344 --runs 1 \
        configs/maskrcnn_dualvit_s_coco.py configs/maskrcnn_sequencer2d_s_coco.py

    # a timm model without its classifier as a backbone row (needs timm), e.g. Sequencer2D-S against timm's
    python tools/analysis/benchmark.py --backbone-only --shape 224 224 --runs 7 \
        configs/imagenet_sequencer2d_s.py timm::sequencer2d_s

Each row is measured in a fresh process, so that its peak memory is its own: parameters and GMACs of one image
(mmengine's analyzer with our LSTM and fused-attention handles, ``mmdualvit.analysis``), the latency of each phase
(median of ``--runs`` after one warm-up, ``--batch`` images) and its peak memory: CUDA max allocated above the
phase's start on GPU; on CPU the phase's peak RSS (Linux's VmHWM, reset when the phase starts) above the process's
RSS once model and input exist. ``--cfg-options`` apply to every config row, before the
row's own options. The table gives each figure with its ratio to the ``--baseline`` row; ``--out`` also writes every
figure as JSON and CSV.

Roofline: the same run first times a large matmul (``--peak-size``; fp32, on GPU also fp16 and bf16, on CPU with
``--amp`` bf16), the machine's practical GEMM peak in GMAC/s. Every row then gives its achieved GMAC/s (MACs of its
batch over the median time; a training step counted as 3x the forward MACs: forward, and backward to inputs and to
weights) and that as a fraction of the peak of the dtype it runs in.
With ``--compile`` every row is measured twice, eager and with its backbone compiled (the warm-up run compiles).
``--phases infer`` skips the timed training steps (for whole models most of a row's time).
"""
import argparse
import csv
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, List, Optional

from mmengine.config import DictAction

TIMM = 'timm::'


@dataclasses.dataclass
class Settings:
    """How every row is measured (the same for all rows of one run; passed to each worker process)."""
    shape: List[int]
    batch: int = 1
    runs: int = 3
    device: str = 'cpu'
    amp: bool = False
    backbone_only: bool = False
    compile: str = ''  # a torch.compile backend: measure every row also with its backbone compiled by it
    phases: List[str] = dataclasses.field(default_factory=lambda: ['infer', 'train'])  # what to time
    threads: Optional[int] = None
    cfg_options: dict = dataclasses.field(default_factory=dict)  # of every config row, before the row's own


@dataclasses.dataclass
class Row:
    """One row of the table: a config (or ``timm::NAME``), the config options of this row alone, and whether its
    backbone runs torch.compile'd."""
    config: str
    cfg_options: dict
    compiled: bool = False

    @property
    def label(self) -> str:
        return ' '.join([self.config, *(f'{k}={v}' for k, v in self.cfg_options.items())] +
                        (['(compiled)'] if self.compiled else []))


@dataclasses.dataclass
class Target:
    """What a worker measures: the module (switched to eval() for inference and to train() for training),
    its parameters and MACs, and the two timed steps of one row."""
    module: object
    params: int
    macs: int
    infer: Callable[[], None]
    train: Callable[[], None]


# The table's columns after the config: (key of a measured row, title); {infer} and {train} name the phases of the
# mode (PHASES). A figure measure() adds to its rows becomes a column by one entry here.
COLUMNS = [('params_m', 'params (M)'), ('gmacs', 'GMACs'), ('infer_s', '{infer} (s)'),
           ('infer_peak_gib', '{infer} peak mem (GiB)'), ('train_s', '{train} (s)'),
           ('train_peak_gib', '{train} peak mem (GiB)'), ('infer_gmac_s', '{infer} GMAC/s'),
           ('infer_peak_frac', '{infer} of GEMM peak'), ('train_gmac_s', '{train} GMAC/s'),
           ('train_peak_frac', '{train} of GEMM peak')]
TRAIN_MACS_PER_FORWARD = 3  # forward, backward to the inputs, backward to the weights
PHASES = {False: dict(infer='inference', train='train step'), True: dict(infer='forward', train='forward+backward')}


def _rss() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak_rss() -> None:
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # Linux >= 4.0: the peak RSS (VmHWM) restarts from the current RSS


def _peak_rss() -> int:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:'))


def _whole_model(model, cfg, settings: Settings, autocast) -> Target:
    """Inference through ``mode='predict'``; a training step of loss, backward and an AdamW step."""
    import torch

    from mmdualvit.analysis import model_complexity
    from mmdualvit.building import synthetic_batch
    if cfg.default_scope not in ('mmdet', 'mmseg'):
        raise ValueError(f'whole-model rows need an mmdet or mmseg config, not {cfg.default_scope!r}; '
                         'pass --backbone-only to measure its backbone.')
    if cfg.default_scope == 'mmseg':
        if settings.batch < 2:
            raise ValueError('mmseg decode heads with BatchNorm need at least 2 images per training step; '
                             'pass --batch 2 for segmentation configs.')
        model.data_preprocessor.size = tuple(settings.shape)  # measure at --shape, not padded to the crop size
    macs, params = model_complexity(model.eval(), settings.shape)
    model.to(settings.device)
    data = synthetic_batch(cfg, tuple(settings.shape), settings.batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def infer():
        with torch.no_grad(), autocast:
            model(**model.data_preprocessor(data, False), mode='predict')

    def train():
        with autocast:
            losses = model(**model.data_preprocessor(data, True), mode='loss')
        loss, _ = model.parse_losses(losses)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Target(model, params, macs, infer, train)


def _backbone(module, settings: Settings, autocast) -> Target:
    """Forward of random images; forward+backward with random gradients on every output (no optimizer step).

    The gradients are dense tensors, as a neck and head would send back: the gradient of ``out.mean()`` is one value
    broadcast with stride 0, which sends eager backward kernels down slow strided paths that training never takes.
    """
    import torch

    from mmdualvit.analysis import complexity
    with torch.no_grad():
        macs, params = complexity(module.eval(), (torch.rand(1, 3, *settings.shape), ))
    module.to(settings.device)
    images = torch.randn(settings.batch, 3, *settings.shape, device=settings.device)
    grads = []  # drawn in the warm-up run from the outputs' shapes; every timed run sends back the same

    def infer():
        with torch.no_grad(), autocast:
            module(images)

    def train():
        with autocast:
            outs = module(images)
        outs = [out.float() for out in (outs if isinstance(outs, (tuple, list)) else (outs, ))]
        if not grads:
            grads.extend(torch.randn_like(out) for out in outs)
        torch.autograd.backward(outs, grads)

    return Target(module, params, macs, infer, train)


def build_target(row: Row, settings: Settings) -> Target:
    """The module of ``row`` (on CPU, no pretrained weights) and its steps, as ``settings`` ask."""
    import torch
    autocast = torch.autocast(settings.device, dtype=torch.bfloat16 if settings.device == 'cpu' else torch.float16,
                              enabled=settings.amp)
    if row.config.startswith(TIMM):
        if not settings.backbone_only:
            raise ValueError(f'{row.config}: a timm model is measured as a backbone; pass --backbone-only.')
        import timm

        # No classifier and no pooling: forward returns the features (for sequencer2d_* those of forward_features).
        module = timm.create_model(row.config[len(TIMM):], pretrained=False, num_classes=0, global_pool='')
        target = _backbone(module, settings, autocast)
        if row.compiled:
            torch._dynamo.config.allow_rnn = True  # as compile_backbone does
            module.compile(backend=settings.compile)
        return target
    from mmdualvit.building import build_from_config
    from mmdualvit.models.utils import compile_backbone
    model, cfg = build_from_config(row.config, {**settings.cfg_options, **row.cfg_options})
    target = (_backbone(model.backbone, settings, autocast) if settings.backbone_only else
              _whole_model(model, cfg, settings, autocast))
    if row.compiled:  # after counting the MACs, which traces the eager module
        compile_backbone(model, backend=settings.compile)
    return target


def timed(step: Callable[[], None], settings: Settings, idle_rss: int) -> tuple:
    """(median, min, max) seconds of ``step`` over ``settings.runs`` after a warm-up, and its peak memory in bytes.

    Not ``torch.utils.benchmark.Timer``: its ``timeit`` runs the statement at least twice more as a warm-up before
    every measurement and returns only their mean, and its autorange methods size their blocks by running it
    repeatedly; for whole-model steps of seconds that is several times the runs asked for, without the spread.
    (It would also set torch to one thread unless told otherwise.)"""
    import torch
    cuda = settings.device == 'cuda'
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
    times = []
    for run in range(settings.runs + 1):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if run:  # run 0 is the warm-up
            times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _peak_rss() - idle_rss
    return statistics.median(times), min(times), max(times), peak


def measure(row: Row, settings: Settings) -> dict:
    """All figures of one row (runs in the worker process)."""
    import torch

    import mmdualvit  # noqa: F401  (registers our modules)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    target = build_target(row, settings)
    result = dict(config=row.config, cfg_options=row.cfg_options, compiled=row.compiled,
                  params_m=target.params / 1e6, gmacs=target.macs / 1e9)
    idle = _rss()
    for phase, step, train in (('infer', target.infer, False), ('train', target.train, True)):
        if phase not in settings.phases:
            continue
        target.module.train(train)
        median, low, high, peak = timed(step, settings, idle)
        result.update({f'{phase}_s': median, f'{phase}_min_s': low, f'{phase}_max_s': high,
                       f'{phase}_peak_gib': peak / 2**30})
    return result


def gemm_peak(settings: Settings, size: int, dtype_name: str) -> float:
    """GMAC/s of a (size x size) @ (size x size) matmul in ``dtype_name``: the best of 3 runs after a warm-up."""
    import torch
    dtype = getattr(torch, dtype_name)
    a, b = (torch.randn(size, size, device=settings.device).to(dtype) for _ in range(2))
    best = float('inf')
    for run in range(4):
        start = time.perf_counter()
        a @ b
        if settings.device == 'cuda':
            torch.cuda.synchronize()
        if run:
            best = min(best, time.perf_counter() - start)
    return size**3 / best / 1e9


def peaks(settings: Settings, size: int) -> dict:
    """GEMM peaks in GMAC/s by dtype name: float32, plus the autocast dtype with --amp (fp16/bf16 on GPU)."""
    import torch
    if settings.threads:
        torch.set_num_threads(settings.threads)
    names = ['float32']
    if settings.device == 'cuda':
        names += ['float16', 'bfloat16']
    elif settings.amp:
        names.append('bfloat16')
    return {name: gemm_peak(settings, size, name) for name in names}


def add_roofline(row: dict, settings: Settings, peak_gmac_s: dict) -> None:
    """Achieved GMAC/s of each phase and its fraction of the GEMM peak of the dtype the row computes in."""
    if 'error' in row:
        return
    dtype = 'float32' if not settings.amp else 'float16' if settings.device == 'cuda' else 'bfloat16'
    for phase, factor in (('infer', 1), ('train', TRAIN_MACS_PER_FORWARD)):
        if phase not in settings.phases:
            continue
        row[f'{phase}_gmac_s'] = factor * row['gmacs'] * settings.batch / row[f'{phase}_s']
        row[f'{phase}_peak_frac'] = row[f'{phase}_gmac_s'] / peak_gmac_s[dtype]


def table(rows: List[dict], baseline: int, settings: Settings) -> str:
    """Markdown table: each figure with its ratio to the baseline row (the columns of the phases measured)."""
    base = rows[baseline]
    columns = [(key, title) for key, title in COLUMNS if key.split('_')[0] not in PHASES[False] or
               key.split('_')[0] in settings.phases]
    titles = [title.format(**PHASES[settings.backbone_only]) for _, title in columns]
    lines = ['| config | ' + ' | '.join(titles) + ' |', '|---' * (len(columns) + 1) + '|']
    for row in rows:
        label = Row(row['config'], row.get('cfg_options', {}), row.get('compiled', False)).label
        if 'error' in row:
            lines.append(f"| {label} | error: {row['error']} |")
            continue
        # no ratio to a baseline that failed or measured 0 (e.g. no memory above idle on a tiny input)
        cells = [f'{row[key]:.2f}' + (f' ({row[key] / base[key]:.2f}x)' if base.get(key) else '')
                 for key, _ in columns]
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def parse_rows(words: List[str]) -> List[Row]:
    """Rows from the command line: each config (a ``.py`` file or ``timm::NAME``) followed by its own KEY=VALUE
    options, parsed as mmengine's ``--cfg-options`` are."""
    parser = argparse.ArgumentParser(prog='benchmark.py')
    parser.add_argument('--options', nargs='+', action=DictAction)
    groups: List[tuple] = []
    for word in words:
        if word.endswith('.py') or word.startswith(TIMM):
            groups.append((word, []))
        elif '=' in word and groups and not groups[-1][0].startswith(TIMM):
            groups[-1][1].append(word)
        else:
            raise SystemExit(f'benchmark.py: {word!r} is neither a config (.py, timm::NAME) nor a KEY=VALUE option '
                             'following a config file')
    return [Row(config, parser.parse_args(['--options', *options]).options if options else {})
            for config, options in groups]


def run_worker(row: Row, settings: Settings) -> dict:
    """``measure(row, settings)`` in a fresh process; a row with ``error`` (the worker's last stderr line) if it
    fails."""
    job = json.dumps(dict(row=dataclasses.asdict(row), settings=dataclasses.asdict(settings)))
    proc = subprocess.run([sys.executable, __file__, '--worker', job], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    if proc.returncode != 0:
        return dict(config=row.config, cfg_options=row.cfg_options, compiled=row.compiled,
                    error=(proc.stderr.strip().splitlines() or ['?'])[-1][:200])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write(out: str, header: str, settings: Settings, peak_gmac_s: dict, rows: List[dict]) -> None:
    """benchmark.json (the setting line, the settings, the GEMM peaks and the rows) and benchmark.csv (one line per
    row)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'benchmark.json'), 'w') as f:
        json.dump(dict(setting=header, settings=dataclasses.asdict(settings), peak_gmac_s=peak_gmac_s, rows=rows), f,
                  indent=1)
    keys = sorted({k for row in rows for k in row})
    with open(os.path.join(out, 'benchmark.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('rows', nargs='*', metavar='CONFIG [KEY=VALUE ...]',
                        help='config files, package configs (mmdet::..., mmseg::...) or timm::NAME (--backbone-only), '
                             'each optionally followed by config options of that row alone')
    parser.add_argument('--backbone-only', action='store_true',
                        help="measure the config's backbone: forward and forward+backward on random images")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='config options of every row')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1344], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--amp', action='store_true', help='autocast: fp16 on GPU, bfloat16 on CPU')
    parser.add_argument('--compile', nargs='?', const='inductor', default='', metavar='BACKEND',
                        help='measure every row twice: eager, and with its backbone torch.compile\'d (by BACKEND, '
                             'default inductor)')
    parser.add_argument('--phases', nargs='+', choices=['infer', 'train'], default=['infer', 'train'],
                        help='what to time: inference (forward) and/or a training step (forward+backward)')
    parser.add_argument('--peak-size', type=int, default=4096, help='side of the matmul that measures the GEMM peak')
    parser.add_argument('--threads', type=int, help="torch's intra-op threads (default: torch's own choice)")
    parser.add_argument('--baseline', type=int, default=0,
                        help='index of the config the ratios refer to (its eager row with --compile)')
    parser.add_argument('--out', help='folder for benchmark.json and benchmark.csv')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(measure(Row(**job['row']), Settings(**job['settings']))))
        return
    rows = parse_rows(args.rows)
    if not rows:
        parser.error('name at least one config')
    if not 0 <= args.baseline < len(rows):
        parser.error(f'--baseline {args.baseline}: there are {len(rows)} rows (0 to {len(rows) - 1})')
    if args.device is None:
        import torch
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    settings = Settings(shape=args.shape, batch=args.batch, runs=args.runs, device=args.device, amp=args.amp,
                        backbone_only=args.backbone_only, compile=args.compile, phases=args.phases,
                        threads=args.threads, cfg_options=args.cfg_options or {})
    if settings.compile:  # each row eager, then compiled (the baseline index counts the eager rows)
        rows = [dataclasses.replace(row, compiled=compiled) for row in rows for compiled in (False, True)]
        args.baseline *= 2
    peak_gmac_s = peaks(settings, args.peak_size)
    results = []
    for row in rows:
        results.append(run_worker(row, settings))
        add_roofline(results[-1], settings, peak_gmac_s)
        print(f"measured {row.label}: {results[-1].get('error') or 'ok'}", flush=True)
    what = 'backbone' if settings.backbone_only else 'whole model'
    extras = [f'{settings.threads} threads'] if settings.threads else []
    extras += [f'{k}={v}' for k, v in settings.cfg_options.items()]
    header = (f'{what}, input {settings.shape[0]}x{settings.shape[1]}, batch {settings.batch}, {settings.device}'
              f"{', amp' if settings.amp else ''}{''.join(', ' + e for e in extras)}, median of {settings.runs} runs; "
              f'ratios vs {rows[args.baseline].label}; GEMM peak '
              + ', '.join(f'{name} {value:.1f} GMAC/s' for name, value in peak_gmac_s.items()))
    print(header)
    print(table(results, args.baseline, settings))
    if args.out:
        write(args.out, header, settings, peak_gmac_s, results)


if __name__ == '__main__':
    main()
