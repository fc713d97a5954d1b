"""Training checkpoints through mmdualvit's StrictRunner and PortableCheckpointHook (issue #10, runner side).

Fast: a two-parameter model trained for a few iterations; the detector end-to-end checks are in test_tools.py.
"""
import os
import os.path as osp
import re
import signal
import stat
import sys
from pathlib import Path

import pytest
import torch

from mmdualvit.checkpoint import CheckpointError
from mmdualvit.fileio import TMP_SUFFIX, remove_temporaries
from tests.toy_runner import build_runner, start_paused_writer
from tests.utils import REPO, run_tool


def log_of(runner) -> str:
    return Path(runner.log_dir, f'{runner.timestamp}.log').read_text()


@pytest.fixture
def trained(tmp_path):
    """A work dir with iter_2.pth, iter_4.pth and last_checkpoint -> iter_4.pth."""
    build_runner(tmp_path / 'work', max_iters=4).train()
    return tmp_path / 'work'


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_checkpoints_hold_no_objects_and_restore_the_history(trained):
    checkpoint = torch.load(trained / 'iter_4.pth', map_location='cpu', weights_only=True)
    scalars = checkpoint['message_hub']['log_scalars']
    assert isinstance(scalars['train/loss'], dict) and len(scalars['train/loss']['log_history']) == 4
    assert isinstance(checkpoint['message_hub']['runtime_info']['eta'], (int, float))  # numpy float64 in mmengine
    runner = build_runner(trained, max_iters=4, resume=True)
    runner.train()  # nothing left to do, but the checkpoint is loaded
    history = runner.message_hub.get_scalar('train/loss')
    assert history.data[0].tolist() == scalars['train/loss']['log_history']
    assert history.mean() == pytest.approx(sum(scalars['train/loss']['log_history']) / 4)


def test_multistep_milestones_are_stored_plain_and_restored_on_resume(tmp_path):
    """Multi-step schedulers keep milestones in a collections.Counter, which torch < 2.4's weights_only unpickler
    refuses: the hook stores plain pairs and resuming restores the Counter, so the lr still drops on schedule."""
    import zipfile
    from collections import Counter

    # An explicit end: otherwise mmengine sets it to the first run's max_iters, and the resumed run never steps it.
    scheduler = dict(type='MultiStepLR', by_epoch=False, begin=0, end=100, milestones=[3], gamma=0.1)
    build_runner(tmp_path / 'work', max_iters=2, param_scheduler=scheduler).train()
    with zipfile.ZipFile(tmp_path / 'work' / 'iter_2.pth') as archive:
        pickle_bytes = archive.read(next(n for n in archive.namelist() if n.endswith('data.pkl')))
    assert b'Counter' not in pickle_bytes  # no collections.Counter global for the unpickler to refuse
    runner = build_runner(tmp_path / 'work', max_iters=5, resume=True, param_scheduler=scheduler)
    runner.train()
    milestones = runner.param_schedulers[0].milestones
    assert isinstance(milestones, Counter) and milestones == Counter({3: 1})
    assert runner.optim_wrapper.get_lr()['lr'] == [pytest.approx(0.01)]  # dropped once, at iteration 3


def test_resume_without_last_checkpoint_takes_the_newest_valid_one(trained):
    (trained / 'last_checkpoint').unlink()
    runner = build_runner(trained, max_iters=6, resume=True)
    runner.train()
    log = log_of(runner)
    assert f'last_checkpoint does not exist; resuming from the newest readable checkpoint, {trained}/iter_4.pth' \
        in log
    assert 'resumed epoch: 0, iter: 4' in log


@pytest.mark.parametrize('content, problem', [
    (b'', 'is empty'), (b'\0' * 64, 'is damaged (it holds NUL bytes)'),  # zeros: a crash during an in-place write
    (b'\xff\xfe/iter_4.pth', "is damaged ('utf-8' codec can't decode byte 0xff")])
def test_resume_with_an_empty_or_damaged_last_checkpoint_says_so_and_uses_the_newest(trained, content, problem):
    record = trained / 'last_checkpoint'
    record.write_bytes(content)
    runner = build_runner(trained, max_iters=6, resume=True)
    runner.train()
    log = log_of(runner)
    assert f'--resume: {record} {problem}' in log and runner.iter == 6
    assert f'; resuming from the newest readable checkpoint, {trained}/iter_4.pth' in log


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(trained):
    truncate(trained / 'iter_4.pth')
    runner = build_runner(trained, max_iters=6, resume=True)
    runner.train()
    log = log_of(runner)
    assert "iter_4.pth' is truncated or corrupt (" in log
    assert f'resuming from the newest readable checkpoint, {trained}/iter_2.pth' in log
    assert 'resumed epoch: 0, iter: 2' in log and runner.iter == 6


def test_resume_refuses_when_no_checkpoint_is_readable(trained):
    (trained / 'last_checkpoint').unlink()
    truncate(trained / 'iter_4.pth')
    truncate(trained / 'iter_2.pth')
    runner = build_runner(trained, max_iters=6, resume=True)
    with pytest.raises(CheckpointError, match=r'last_checkpoint does not exist, and no readable iter_N.pth / '
                                              r'epoch_N.pth .*\(2 unreadable\).*--resume PATH'):
        runner.train()
    assert sorted(p.name for p in trained.glob('*.pth')) == ['iter_2.pth', 'iter_4.pth']  # nothing deleted


def test_explicit_resume_of_a_truncated_file_is_an_error(trained):
    truncate(trained / 'iter_4.pth')
    runner = build_runner(trained, max_iters=6, resume=True, load_from=str(trained / 'iter_4.pth'))
    with pytest.raises(CheckpointError, match=r"iter_4.pth' is truncated or corrupt \("):
        runner.train()


def test_random_bytes_are_called_corrupt_not_unsafe(tmp_path):
    path = tmp_path / 'random.pth'
    path.write_bytes(bytes(range(256)) * 8)
    runner = build_runner(tmp_path / 'work', max_iters=2)
    with pytest.raises(CheckpointError, match=r"random.pth' is truncated or corrupt \(\S") as error:
        runner.load_checkpoint(str(path))
    assert 'trust' not in str(error.value) and 'weights_only' not in str(error.value)


def test_resume_in_an_empty_work_dir_starts_from_scratch(tmp_path):
    runner = build_runner(tmp_path, max_iters=2, resume=True)
    runner.train()
    assert 'no checkpoint in' in log_of(runner) and runner.iter == 2


def test_load_from_is_strict_and_names_file_mismatches_and_override(trained):
    wide = build_runner(trained.parent / 'wide', max_iters=2, width=3)
    path = str(trained / 'iter_4.pth')
    with pytest.raises(CheckpointError) as error:
        wide.load_checkpoint(path)
    message = str(error.value)
    assert f"checkpoint '{path}' does not match the model" in message
    assert '1 shape differs (file vs model): linear.weight: torch.Size([1, 1]) vs torch.Size([1, 3])' in message
    assert '--allow-partial-load or --cfg-options strict_load=False' in message

    checkpoint = torch.load(path, weights_only=True)
    checkpoint['state_dict'].pop('norm.running_mean')
    checkpoint['state_dict']['head.weight'] = torch.zeros(1)
    torch.save(checkpoint, trained / 'tampered.pth')
    same = build_runner(trained.parent / 'same', max_iters=2)
    with pytest.raises(CheckpointError, match=r'(?s)1 missing in the file: norm.running_mean.*'
                                              r'1 unexpected in the file: head.weight'):
        same.load_checkpoint(str(trained / 'tampered.pth'))


def test_partial_load_is_explicit_and_loads_what_matches(trained):
    runner = build_runner(trained.parent / 'partial', max_iters=2, strict_load=False)
    checkpoint = torch.load(trained / 'iter_4.pth', weights_only=True)
    checkpoint['state_dict'].pop('linear.bias')
    torch.save(checkpoint, trained / 'partial.pth')
    runner.load_checkpoint(str(trained / 'partial.pth'))
    assert torch.equal(runner.model.linear.weight, checkpoint['state_dict']['linear.weight'])
    assert '1 missing in the file: linear.bias' in log_of(runner)


def test_stale_temporaries_are_removed_at_the_next_start(trained):
    stale = trained / f'.iter_6.pth.0123abcd{TMP_SUFFIX}'
    stale.write_bytes(b'half a checkpoint')
    other = trained / 'notes.tmp'  # not ours: kept
    other.write_text('x')
    runner = build_runner(trained, max_iters=6, resume=True)
    runner.train()
    assert not stale.exists() and other.exists()
    assert f'Removed {stale}' in log_of(runner)
    assert remove_temporaries(trained) == []


def test_last_checkpoint_is_replaced_atomically(trained, monkeypatch):
    runner = build_runner(trained, max_iters=6, resume=True)
    real_replace = os.replace

    def killed_while_renaming(src, dst):
        if osp.basename(dst) == 'last_checkpoint':
            raise KeyboardInterrupt('killed')
        real_replace(src, dst)
    monkeypatch.setattr(os, 'replace', killed_while_renaming)
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    assert (trained / 'last_checkpoint').read_text() == f'{trained}/iter_4.pth'  # old content, complete
    assert torch.load(trained / 'iter_6.pth', weights_only=True)['meta']['iter'] == 6
    assert not list(trained.glob(f'.*{TMP_SUFFIX}'))


def test_old_checkpoints_are_removed_only_after_the_new_one_is_written(tmp_path, monkeypatch):
    build_runner(tmp_path, max_iters=4, max_keep_ckpts=2).train()
    runner = build_runner(tmp_path, max_iters=6, resume=True, max_keep_ckpts=2)
    monkeypatch.setattr(runner, 'save_checkpoint', lambda *a, **k: (_ for _ in ()).throw(OSError('disk full')))
    with pytest.raises(OSError, match='disk full'):
        runner.train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_2.pth', 'iter_4.pth']
    monkeypatch.undo()
    build_runner(tmp_path, max_iters=6, resume=True, max_keep_ckpts=2).train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_4.pth', 'iter_6.pth']


def test_the_previous_best_checkpoint_is_removed_only_after_the_new_one_is_written(tmp_path, monkeypatch):
    """mmengine's hook (save_best) deletes the previous best checkpoint before it writes the new one."""
    from mmengine.evaluator import BaseMetric

    class Rising(BaseMetric):  # every validation is a new best
        calls = 0

        def process(self, data_batch, data_samples):
            self.results.append(0)

        def compute_metrics(self, results):
            Rising.calls += 1
            return dict(calls=Rising.calls)
    runner = build_runner(tmp_path, max_iters=4, val_metric=Rising(),
                          checkpoint_options=dict(save_best='calls', rule='greater'))
    real_save = runner.save_checkpoint

    def disk_full_at_the_second_best(out_dir, filename, *args, **kwargs):
        if filename.startswith('best_') and Rising.calls == 2:
            raise OSError('disk full')
        return real_save(out_dir, filename, *args, **kwargs)
    monkeypatch.setattr(runner, 'save_checkpoint', disk_full_at_the_second_best)
    with pytest.raises(OSError, match='disk full'):
        runner.train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['best_calls_iter_2.pth', 'iter_2.pth', 'iter_4.pth']
    monkeypatch.undo()
    Rising.calls = 2
    build_runner(tmp_path, max_iters=6, resume=True, val_metric=Rising(),
                 checkpoint_options=dict(save_best='calls', rule='greater')).train()
    assert sorted(p.name for p in tmp_path.glob('best_*.pth')) == ['best_calls_iter_6.pth']


@pytest.mark.parametrize('umask', [0o022, 0o027])
def test_written_files_get_the_mode_of_a_normal_write(tmp_path, umask):
    old = os.umask(umask)
    try:
        build_runner(tmp_path, max_iters=2).train()
    finally:
        os.umask(old)
    for name in ('iter_2.pth', 'last_checkpoint'):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_then_resume(tmp_path):
    """The writer is stopped *inside* the atomic write of iter_4.pth (data written, not yet renamed) and killed."""
    work = tmp_path / 'work'
    proc, tmp = start_paused_writer(work, max_iters=6)
    try:
        assert tmp.exists() and tmp.stat().st_size > 0
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (work / 'iter_4.pth').exists() and tmp.exists()
    assert (work / 'last_checkpoint').read_text() == f'{work}/iter_2.pth'

    runner = build_runner(work, max_iters=6, resume=True)
    runner.train()
    assert not tmp.exists() and f'Removed {tmp}' in log_of(runner)
    assert 'resumed epoch: 0, iter: 2' in log_of(runner) and runner.iter == 6
    assert torch.load(work / 'iter_6.pth', weights_only=True)['meta']['iter'] == 6


@pytest.fixture(scope='module')
def crafted(tmp_path_factory):
    from tests.crafted_checkpoints import write_void_dtype_with_object_field
    path = tmp_path_factory.mktemp('crafted') / 'evil.pth'
    write_void_dtype_with_object_field(path)
    return path


@pytest.mark.slow
def test_crafted_file_crashes_a_loader_that_allows_numpy_dtypes(crafted, tmp_path):
    """The file is the real attack: with numpy's dtype classes allow-listed (as mmdualvit once did) the loading
    process dies of a signal when the array is freed. torch < 2.4 has no allow-list: there the control is a full
    unpickling (what --trust-checkpoint does)."""
    code = ('import numpy as np, torch\n'
            'm = np._core.multiarray if int(np.__version__.split(".")[0]) >= 2 else np.core.multiarray\n'
            'safe = hasattr(torch.serialization, "add_safe_globals")\n'
            'if safe: torch.serialization.add_safe_globals([m._reconstruct, np.ndarray, np.dtype, '
            '*[type(np.dtype(c)) for c in np.typecodes["All"] if c not in "OMm"]])\n'
            f'checkpoint = torch.load({str(crafted)!r}, weights_only=safe)\n'
            'del checkpoint\n')
    proc = run_tool([sys.executable, '-c', code], tmp_path, timeout=300, check=False)
    assert proc.returncode < 0, f'expected a crash, got rc {proc.returncode}: {proc.stdout[-2000:]}'


@pytest.mark.slow
@pytest.mark.parametrize('entry', ['init_cfg', 'dualvit2mmdualvit', 'sequencer2mmdualvit', 'test.py', 'load_from',
                                   'resume'])
def test_crafted_file_is_refused_by_every_loading_path(crafted, tmp_path, entry):
    toy = REPO / 'configs/toy/maskrcnn_dualvit_toy.py'
    fast = ['train_cfg.max_iters=1', 'train_cfg.val_interval=1000']
    if entry in ('test.py', 'load_from', 'resume'):
        from mmdualvit.datasets import make_toy_coco
        make_toy_coco(tmp_path / 'data' / 'toy_coco', num_train=2, num_val=1, image_size=(64, 64), seed=1)
    args = {
        'init_cfg': [sys.executable, '-c', 'from mmdualvit.models import DualViT\n'
                     f'DualViT(arch="s", init_cfg=dict(type="Pretrained", checkpoint={str(crafted)!r}))'
                     '.init_weights()'],
        'dualvit2mmdualvit': [sys.executable, str(REPO / 'tools/model_converters/dualvit2mmdualvit.py'), str(crafted),
                              str(tmp_path / 'out.pth')],
        'sequencer2mmdualvit': [sys.executable, str(REPO / 'tools/model_converters/sequencer2mmdualvit.py'),
                                str(crafted), str(tmp_path / 'out.pth')],
        'test.py': [sys.executable, str(REPO / 'tools/test.py'), str(toy), str(crafted), '--work-dir',
                    str(tmp_path / 'w')],
        'load_from': [sys.executable, str(REPO / 'tools/train.py'), str(toy), '--work-dir', str(tmp_path / 'w'),
                      '--cfg-options', f'load_from={crafted}', *fast],
        'resume': [sys.executable, str(REPO / 'tools/train.py'), str(toy), '--work-dir', str(tmp_path / 'w'),
                   '--resume', str(crafted), '--cfg-options', *fast],
    }[entry]
    proc = run_tool(args, tmp_path, timeout=300, check=False)
    rc, out = proc.returncode, proc.stdout
    assert rc > 0, f'rc {rc} (a negative rc is a crash by signal): {out[-3000:]}'
    assert 'numpy' in out and re.search(r'weights_only|safe', out, re.IGNORECASE), out[-3000:]
    assert not (tmp_path / 'out.pth').exists()


def test_load_from_an_http_url_is_read_safely_and_strictly(trained, tmp_path):
    import functools
    import http.server
    import threading

    from tests.crafted_checkpoints import write_void_dtype_with_object_field
    write_void_dtype_with_object_field(trained / 'evil.pth')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(trained))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f'http://127.0.0.1:{server.server_address[1]}'
        runner = build_runner(tmp_path, max_iters=2)
        runner.load_checkpoint(f'{url}/iter_4.pth')
        expected = torch.load(trained / 'iter_4.pth', weights_only=True)['state_dict']['linear.weight']
        assert torch.equal(runner.model.linear.weight, expected)
        with pytest.raises(CheckpointError,
                           match=r'needs numpy\S* to unpickle, which safe loading \(weights_only=True\) refuses'):
            runner.load_checkpoint(f'{url}/evil.pth')
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize('fault', ['needs trust', 'named in last_checkpoint', 'i/o error'])
def test_an_intact_newest_checkpoint_that_cannot_be_read_stops_resume(trained, fault, monkeypatch):
    """Only damaged files (truncated, empty, corrupt) are skipped: resuming from iter_2.pth past an intact iter_4.pth
    that merely needs --trust-checkpoint, or that the file system failed to deliver once, would overwrite it."""
    import errno

    from mmdualvit import checkpoint as reader
    from mmdualvit.engine.runner import WorkDirError
    newest = trained / 'iter_4.pth'
    if fault == 'i/o error':  # a network file system's hiccup, on this file only
        real_load = reader.torch.load

        def flaky_load(path, *args, **kwargs):
            if str(path).endswith('iter_4.pth'):
                raise OSError(errno.EIO, 'Input/output error')
            return real_load(path, *args, **kwargs)

        monkeypatch.setattr(reader.torch, 'load', flaky_load)
    else:  # what a plain mmengine CheckpointHook writes: objects that safe loading refuses
        checkpoint = torch.load(newest, weights_only=True)
        checkpoint['meta']['hook'] = print
        torch.save(checkpoint, newest)
    if fault != 'named in last_checkpoint':
        (trained / 'last_checkpoint').unlink()
    before = newest.stat().st_mtime_ns
    with pytest.raises(WorkDirError, match=r'iter_4.pth cannot be read, and it is not damaged, so it is not skipped '
                                           r'.*(--trust-checkpoint|Input/output error).*--work-dir NEW_DIR --resume '
                                           r'OLDER\.pth\), or pass --overwrite-work-dir'):
        build_runner(trained, max_iters=6, resume=True).train()
    assert newest.stat().st_mtime_ns == before and not (trained / 'iter_6.pth').exists()

    overwriting = build_runner(trained, max_iters=6, resume=True, overwrite_work_dir=True)
    overwriting.train()  # the explicit choice: resume from iter_2.pth and replace iter_4.pth
    assert 'resumed epoch: 0, iter: 2' in log_of(overwriting) and (trained / 'iter_6.pth').exists()


@pytest.mark.parametrize('meta,expected', [
    (dict(epoch=0, iter=-4), r"its meta\['iter'\] is -4, not a non-negative integer"),
    (dict(epoch=0, iter=float('nan')), r"its meta\['iter'\] is nan, not a non-negative integer"),
    (dict(epoch=0, iter='4'), r"its meta\['iter'\] is '4', not a non-negative integer"),
    (dict(epoch=True, iter=4), r"its meta\['epoch'\] is True, not a non-negative integer"),
    (dict(iter=4), r"its meta\['epoch'\] is None, not a non-negative integer"),
    ([0, 4], r'records no training state \(its meta is list, not a dict with epoch and iter\)'),
    (None, r'records no training state \(its meta is NoneType.*load_from \(--cfg-options load_from=')])
def test_resume_checks_the_recorded_position(trained, meta, expected):
    checkpoint = torch.load(trained / 'iter_4.pth', weights_only=True)
    if meta is None:
        checkpoint.pop('meta')
    elif isinstance(meta, dict):  # the rest of the meta (seed, config ...) as written
        checkpoint['meta'] = {**{k: v for k, v in checkpoint['meta'].items() if k not in ('epoch', 'iter')}, **meta}
    else:
        checkpoint['meta'] = meta
    torch.save(checkpoint, trained / 'iter_4.pth')
    for load_from in (None, str(trained / 'iter_4.pth')):  # found by --resume, and named
        with pytest.raises(CheckpointError, match=expected):
            build_runner(trained, max_iters=6, resume=True, load_from=load_from).train()
    assert not (trained / 'iter_6.pth').exists()


def test_only_a_training_holding_the_lock_dumps_its_config_into_the_work_dir(trained):
    """mmengine dumps the config while the runner is built: a refused training, or a test run given a training's
    work dir, would put (or replace) a config file beside the checkpoints. A test run dumps into its log folder."""
    from mmdualvit.engine.runner import WorkDirError
    files = sorted(p.name for p in trained.iterdir() if p.is_file())
    tester = build_runner(trained, test=True, load_from=str(trained / 'iter_4.pth'))
    tester.test()
    assert (Path(tester.log_dir) / f'{tester.timestamp}.py').is_file()
    with pytest.raises(WorkDirError, match='already holds checkpoints'):
        build_runner(trained, max_iters=6).train()
    assert sorted(p.name for p in trained.iterdir() if p.is_file()) == files
    resumed = build_runner(trained, max_iters=6, resume=True)
    resumed.train()
    assert (trained / f'{resumed.timestamp}.py').is_file()
