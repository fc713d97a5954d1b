"""End-to-end runs of tools/ as subprocesses on the embedded toy data (slow: a few minutes on 2 CPU cores)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmdualvit  # noqa: F401  (weights_only allow-list)
from mmdualvit.datasets import make_toy_coco
from tests.utils import free_port

REPO = Path(__file__).resolve().parents[1]
TOY_DET = REPO / 'configs' / 'toy' / 'maskrcnn_dualvit_toy.py'
FAST = ['train_cfg.val_interval=1000', 'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2']

pytestmark = pytest.mark.slow


def run_tool(args, cwd, env_extra=None, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS='ignore', **(env_extra or {}))
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope='module')
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy')
    make_toy_coco(root / 'data' / 'toy_coco', num_train=8, num_val=4, image_size=(96, 96), seed=1)
    return root


@pytest.fixture(scope='module')
def trained(toy_root):
    """4 iterations with checkpoints at 2 and 4, then --resume to 6."""
    work = toy_root / 'work'
    run_tool([sys.executable, str(REPO / 'tools/train.py'), str(TOY_DET), '--work-dir', str(work),
              '--cfg-options', 'train_cfg.max_iters=4', *FAST], cwd=toy_root)
    resumed = run_tool([sys.executable, str(REPO / 'tools/train.py'), str(TOY_DET), '--work-dir', str(work),
                        '--resume', '--cfg-options', 'train_cfg.max_iters=6', *FAST], cwd=toy_root)
    return work, resumed


def test_train_then_resume_continues_iterations(trained):
    work, resumed_log = trained
    assert 'resumed epoch: 0, iter: 4' in resumed_log
    assert 'Iter(train) [5/6]' in resumed_log or 'Iter(train) [6/6]' in resumed_log
    assert 'Iter(train) [1/6]' not in resumed_log
    assert 'Unsupported global' not in resumed_log and 'weights_only' not in resumed_log
    # The checkpoints our Runner writes load under torch's strict default.
    checkpoint = torch.load(work / 'iter_6.pth', map_location='cpu', weights_only=True)
    assert checkpoint['meta']['iter'] == 6
    assert (work / 'last_checkpoint').read_text().strip().endswith('iter_6.pth')


def test_test_tool_prints_coco_metrics_and_pictures(trained, toy_root):
    work, _ = trained
    show = toy_root / 'show'
    log = run_tool([sys.executable, str(REPO / 'tools/test.py'), str(TOY_DET), str(work / 'iter_6.pth'),
                    '--work-dir', str(toy_root / 'test'), '--show-dir', str(show)], cwd=toy_root)
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log) or 'testing results of the whole dataset is empty' in log
    assert 'Load checkpoint from' in log
    assert len(list(show.glob('*.png'))) == 4


# Runs with mmdualvit made unimportable, as on a machine where only torch (and mmdet) are installed.
WITHOUT_MMDUALVIT = ('import sys\nsys.modules["mmdualvit"] = None\ntry:\n    import mmdualvit\n'
                     'except ImportError:\n    pass\nelse:\n    raise SystemExit("visible")\n')


def test_checkpoints_load_where_mmdualvit_is_not_installed(trained, tmp_path):
    work, _ = trained
    path = str(work / 'iter_6.pth')
    code = WITHOUT_MMDUALVIT + (
        'import torch\n'
        f'checkpoint = torch.load({path!r}, map_location="cpu", weights_only=True)\n'
        'print("iter", checkpoint["meta"]["iter"], "tensors", len(checkpoint["state_dict"]))\n')
    log = run_tool([sys.executable, '-c', code], cwd=tmp_path)
    assert re.search(r'iter 6 tensors \d{3}', log), log


def test_checkpoints_publish_with_mmdets_own_tool(trained, tmp_path):
    import mmdet
    work, _ = trained
    tool = Path(mmdet.__file__).parent / '.mim/tools/model_converters/publish_model.py'
    src, dst = str(work / 'iter_6.pth'), str(tmp_path / 'published.pth')
    code = WITHOUT_MMDUALVIT + (
        'import runpy\n'
        f'sys.argv = ["publish_model.py", {src!r}, {dst!r}]\n'
        f'runpy.run_path({str(tool)!r}, run_name="__main__")\n')
    run_tool([sys.executable, '-c', code], cwd=tmp_path)
    published = list(tmp_path.glob('published-*.pth'))
    assert len(published) == 1
    checkpoint = torch.load(published[0], map_location='cpu', weights_only=True)
    assert set(checkpoint) == {'meta', 'state_dict'}
    original = torch.load(work / 'iter_6.pth', map_location='cpu', weights_only=True)['state_dict']
    assert all(torch.equal(v, original[k]) for k, v in checkpoint['state_dict'].items())


def test_test_tool_is_strict_unless_told_otherwise(trained, tmp_path):
    work, _ = trained
    checkpoint = torch.load(work / 'iter_6.pth', map_location='cpu', weights_only=True)
    checkpoint['state_dict'] = {k: v for k, v in checkpoint['state_dict'].items() if k.startswith('backbone.')}
    torch.save(checkpoint, tmp_path / 'backbone_only.pth')
    import mmdet
    args = [str(tmp_path / 'backbone_only.pth'), '--work-dir', str(tmp_path / 'w')]
    # mmdet's own test.py builds the config's runner_type, so the strict loading applies there too.
    mmdet_test = Path(mmdet.__file__).parent / '.mim/tools/test.py'
    proc = subprocess.run([sys.executable, str(mmdet_test), str(TOY_DET), *args], cwd=work.parent,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and 'coco/bbox_mAP' not in output
    assert f"checkpoint '{tmp_path / 'backbone_only.pth'}' does not match the model" in output
    assert re.search(r'\d+ missing in the file: (neck|rpn_head|roi_head)\.', output)
    assert '--allow-partial-load' in output
    log = run_tool([sys.executable, str(REPO / 'tools/test.py'), str(TOY_DET), *args, '--allow-partial-load'],
                   cwd=work.parent)
    assert 'does not match the model' in log and 'Load checkpoint from' in log


def test_test_tool_refuses_untrusted_pickle(toy_root, tmp_path):
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': os.system}, evil)  # a reference to a callable: refused by weights_only
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, str(REPO / 'tools/test.py'), str(TOY_DET), str(evil), '--work-dir',
                           str(tmp_path / 'w')], cwd=toy_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert ('needs posix.system to unpickle, which safe loading (weights_only=True) refuses'
            in proc.stdout + proc.stderr)


def test_dist_train_two_gloo_processes_on_cpu(toy_root):
    work = toy_root / 'dist'
    log = run_tool(['bash', str(REPO / 'tools/dist_train.sh'), str(TOY_DET), '2', '--work-dir', str(work),
                    '--cfg-options', 'train_cfg.max_iters=2', *FAST],
                   cwd=toy_root, env_extra=dict(PYTHON=sys.executable, PORT=str(free_port()), OMP_NUM_THREADS='1'))
    assert 'Distributed launcher: pytorch' in log or 'distributed: True' in log
    assert 'Iter(train) [2/2]' in log
    checkpoint = torch.load(work / 'iter_2.pth', map_location='cpu', weights_only=True)
    assert checkpoint['meta']['iter'] == 2


def test_segmentation_train_and_test_report_miou(tmp_path):
    from mmdualvit.datasets import make_toy_ade
    make_toy_ade(tmp_path / 'data' / 'toy_ade', num_train=12, num_val=4, image_size=(96, 96), seed=2)
    config = REPO / 'configs' / 'toy' / 'upernet_dualvit_toy.py'
    # A fixed seed: 60 iterations are a short run whose mIoU depends on the initialisation (one unseeded CI run
    # scored 30.6, 1.3 under the bar below; seed 0 scores 54.65 on this project's CI machine type).
    run_tool([sys.executable, str(REPO / 'tools/train.py'), str(config), '--work-dir', str(tmp_path / 'w'),
              '--cfg-options', 'train_cfg.max_iters=60', 'train_cfg.val_interval=1000',
              'default_hooks.checkpoint.interval=60', 'randomness.seed=0'], cwd=tmp_path)
    log = run_tool([sys.executable, str(REPO / 'tools/test.py'), str(config), str(tmp_path / 'w' / 'iter_60.pth'),
                    '--work-dir', str(tmp_path / 't'), '--show-dir', str(tmp_path / 'show')], cwd=tmp_path)
    miou = float(re.search(r'mIoU: ([0-9.]+)', log).group(1))
    # mIoU counts background as one of 4 classes: painting everything background scores its pixel share / 4.
    import cv2
    labels = [cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
              for path in (tmp_path / 'data/toy_ade/annotations/validation').glob('*.png')]
    all_background = 100 * sum((label == 0).sum() for label in labels) / sum(label.size for label in labels) / 4
    assert miou > all_background + 10, (all_background, log[-2000:])
    assert len(list((tmp_path / 'show').rglob('*.png'))) == 4


def test_sigkill_during_training_then_resume_completes(toy_root):
    """A run killed with SIGKILL after saving resumes from a complete checkpoint and reaches max_iters."""
    import signal
    import time
    work = toy_root / 'killed'
    args = [sys.executable, str(REPO / 'tools/train.py'), str(TOY_DET), '--work-dir', str(work), '--cfg-options',
            'train_cfg.max_iters=8', *FAST]
    proc = subprocess.Popen(args, cwd=toy_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONWARNINGS='ignore'))
    deadline = time.time() + 600
    while not (work / 'iter_4.pth').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
    log = run_tool(args[:-len(FAST) - 2] + ['--resume', '--cfg-options', 'train_cfg.max_iters=8', *FAST],
                   cwd=toy_root)
    resumed_from = int(re.search(r'resumed epoch: 0, iter: (\d+)', log).group(1))
    assert resumed_from in (2, 4, 6)
    assert f'Iter(train) [{resumed_from + 1}/8]' in log and 'Iter(train) [8/8]' in log
    for path in work.glob('*.pth'):  # every checkpoint left on disk is complete
        assert torch.load(path, map_location='cpu', weights_only=True)['meta']['iter'] > 0
    assert not list(work.glob('.*.mmdualvit-tmp')), 'temporary files of interrupted writes are cleaned up or replaced'


def test_benchmark_tool_smoke(tmp_path):
    """tools/analysis/benchmark.py on tiny inputs: ours against a package config, table and JSON/CSV."""
    out = tmp_path / 'bench'
    log = run_tool([sys.executable, str(REPO / 'tools/analysis/benchmark.py'), str(TOY_DET),
                    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '--shape', '64', '96', '--runs', '1',
                    '--out', str(out)], cwd=tmp_path)
    import json
    rows = json.loads((out / 'benchmark.json').read_text())['rows']
    assert [r['config'] for r in rows] == [str(TOY_DET), 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
    for row in rows:
        assert row['params_m'] > 1 and row['gmacs'] > 0.1 and row['infer_s'] > 0 and row['train_s'] > 0
        assert row['train_peak_gib'] > 0
    assert abs(rows[1]['params_m'] - 44.4) < 0.1  # mmdet's Mask R-CNN R-50 (80 classes)
    assert '(1.00x)' in log and (out / 'benchmark.csv').read_text().count('\n') == 3
    seg = run_tool([sys.executable, str(REPO / 'tools/analysis/benchmark.py'),
                    str(REPO / 'configs/toy/upernet_dualvit_toy.py'), '--shape', '64', '64', '--batch', '2', '--runs',
                    '1'], cwd=tmp_path)
    assert 'upernet_dualvit_toy.py | 1.38 (1.00x)' in seg


def test_seeded_deterministic_runs_give_identical_losses(toy_root):
    """Two CPU runs with a fixed seed and randomness.deterministic=True log the same losses."""
    logs = []
    for run in range(2):
        log = run_tool([sys.executable, str(REPO / 'tools/train.py'), str(TOY_DET), '--work-dir',
                        str(toy_root / f'det{run}'), '--cfg-options', 'train_cfg.max_iters=3', 'randomness.seed=0',
                        'randomness.deterministic=True', *FAST], cwd=toy_root)
        logs.append(re.findall(r'Iter\(train\) \[\d/3\].*? loss: ([0-9.]+)', log))
    assert len(logs[0]) == 3 and logs[0] == logs[1]
