"""GPU check: the environment, the cuda-marked tests and the GPU benchmark rows, printed as tables for README.

    python dev/gpu_check.py [--runs 3] [--skip-benchmark] [--out work_dirs/gpu_check]
    make gpu-check

1. Environment: GPU, torch / CUDA / cuDNN versions, and mmcv's ops run on a CUDA tensor (tools/install/check_env.py).
2. ``pytest -m cuda tests``: CUDA vs CPU reference of both backbones, an fp16 AmpOptimWrapper training step of the
   Mask R-CNN / RetinaNet / UperNet configs, Dual-ViT on a fused SDPA kernel, Sequencer2D's LSTMs on cuDNN.
3. Benchmark rows on the GPU with fp16 autocast (tools/analysis/benchmark.py), each eager and with its backbone
   torch.compile'd, against the GPU's measured fp32/fp16/bf16 GEMM peaks: the Mask R-CNN set of README at
   800x1344, the UperNet set at 512x512 (batch 2), and the backbones at 800x1344 (Dual-ViT-S with fused and with
   explicit attention, Sequencer2D-S).
Exits 1 if a check fails, 2 if no CUDA device is visible.
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = [
    (['configs/peers/maskrcnn_pvtv2_b2_coco.py', 'configs/maskrcnn_dualvit_s_coco.py',
      'configs/maskrcnn_sequencer2d_s_coco.py', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
      'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'], ['--shape', '800', '1344', '--batch', '1']),
    (['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
      'configs/upernet_dualvit_s_ade20k.py', 'configs/upernet_sequencer2d_s_ade20k.py'],
     ['--shape', '512', '512', '--batch', '2']),
    (['configs/maskrcnn_dualvit_s_coco.py',
      'configs/maskrcnn_dualvit_s_coco.py', 'model.backbone.fused_attention=False',
      'configs/maskrcnn_sequencer2d_s_coco.py'], ['--backbone-only', '--shape', '800', '1344']),
]


def environment() -> list:
    """(name, value) rows describing the machine and the stack."""
    import mmcv
    import torch
    from mmcv.ops import get_compiling_cuda_version
    return [('date (UTC)', datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')),
            ('GPU', f'{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}'),
            ('Python', platform.python_version()),
            ('torch', f'{torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})'),
            ('mmcv', f'{mmcv.__version__}, ops compiled with CUDA {get_compiling_cuda_version()}')]


def run_tests(out: Path) -> list:
    """Run the cuda-marked tests; (test, outcome, seconds) rows."""
    xml = out / 'cuda_tests.xml'
    subprocess.run([sys.executable, '-m', 'pytest', '-m', 'cuda', 'tests', '-q', f'--junitxml={xml}'], cwd=ROOT)
    rows = []
    for case in ET.parse(xml).getroot().iter('testcase'):
        outcome = 'passed'
        for tag in ('failure', 'error', 'skipped'):
            element = case.find(tag)
            if element is not None:
                outcome = f"{tag}: {(element.get('message') or '').splitlines()[0][:100]}" if element.get(
                    'message') else tag
        rows.append((case.get('name'), outcome, float(case.get('time', 0))))
    return rows


def run_benchmarks(runs: int, out: Path) -> list:
    """benchmark.py's markdown tables (fp16 autocast on the GPU, eager and compiled rows), one per family."""
    tables = []
    for i, (configs, args) in enumerate(BENCHMARKS):
        cmd = [sys.executable, str(ROOT / 'tools' / 'analysis' / 'benchmark.py'), *configs, *args, '--device', 'cuda',
               '--amp', '--compile', '--runs', str(runs), '--out', str(out / f'benchmark{i}')]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if not line.startswith('measured ')]
        tables.append('\n'.join(lines) if proc.returncode == 0 else f'benchmark failed:\n{proc.stderr[-2000:]}')
    return tables


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=3, help='timed runs per benchmark figure (median)')
    parser.add_argument('--skip-benchmark', action='store_true', help='environment and tests only')
    parser.add_argument('--out', default='work_dirs/gpu_check', help='folder for the test XML and benchmark JSON')
    args = parser.parse_args()
    import torch
    if not torch.cuda.is_available():
        print(f'gpu_check: no CUDA device visible (torch {torch.__version__}, built with CUDA {torch.version.cuda}); '
              'run it on a GPU machine. On CPU, `make test` skips the cuda-marked tests.', file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    check = subprocess.run([sys.executable, str(ROOT / 'tools' / 'install' / 'check_env.py')], capture_output=True,
                           text=True, cwd=ROOT)
    env_rows = environment() + [('install check', (check.stdout + check.stderr).strip().splitlines()[-1])]
    test_rows = run_tests(out)
    tables = [] if args.skip_benchmark else run_benchmarks(args.runs, out)

    print('\n| environment | |\n|---|---|')
    print('\n'.join(f'| {name} | {value} |' for name, value in env_rows))
    print('\n| GPU check (`pytest -m cuda`) | result | time |\n|---|---|---|')
    print('\n'.join(f'| {name} | {outcome} | {seconds:.1f} s |' for name, outcome, seconds in test_rows))
    for table in tables:
        print(f'\n{table}')
    failed = check.returncode != 0 or not test_rows or any(outcome != 'passed' for _, outcome, _ in test_rows)
    print(f"\ngpu_check: {'FAILED' if failed else 'all GPU checks passed'} (details in {out})")
    return int(failed)


if __name__ == '__main__':
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')
    sys.exit(main())
