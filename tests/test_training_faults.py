"""Training never ends worse than it started (issue 19): non-finite losses and weights, work dirs that hold
checkpoints, two processes in one work dir, unreadable or out-of-range resume checkpoints, replaced settings.

Fast: the two-parameter toy runner (tests/toy_runner.py); runs that could hang or crash go to subprocesses with a
timeout. The end-to-end runs through tools/train.py on the toy detector are marked slow.
"""
import json
import os
import re
import runpy
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from mmdualvit.checkpoint import CheckpointError
from mmdualvit.engine.runner import WorkDirError
from mmdualvit.fileio import HOLDER_NAME, LOCK_NAME, TMP_SUFFIX, WorkDirLockedError, lock_work_dir
from tests.toy_runner import LineModel, build_runner, start_paused_writer
from tests.utils import REPO, lock_can_be_taken, run_tool, tool_env

TOY_DET = REPO / 'configs' / 'toy' / 'maskrcnn_dualvit_toy.py'
FAST = ['train_cfg.val_interval=1000', 'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=2',
        'train_dataloader.batch_size=2']


def log_of(runner) -> str:
    return Path(runner.log_dir, f'{runner.timestamp}.log').read_text()


def checkpoints(work: Path) -> dict:
    """``{name: meta iter}`` of the work dir's checkpoints, each of which must load and hold finite weights."""
    found = {}
    for path in sorted(work.glob('*.pth')):
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        assert all(torch.isfinite(v).all() for v in checkpoint['state_dict'].values()), f'{path.name} is not finite'
        found[path.name] = checkpoint['meta']['iter']
    return found


def snapshot(work: Path) -> dict:
    """The bytes of the work dir's checkpoints and last_checkpoint (log folders are new for every run)."""
    return {p.name: p.read_bytes() for p in sorted(work.iterdir()) if p.suffix == '.pth' or p.name == 'last_checkpoint'}


def lock_is_free(work: Path) -> bool:
    """Whether the work dir's lock can be taken now (and nobody is recorded as holding it)."""
    return lock_can_be_taken(work) and not (work / HOLDER_NAME).exists()


@pytest.fixture
def trained(tmp_path):
    """A work dir with iter_2.pth, iter_4.pth and last_checkpoint -> iter_4.pth."""
    build_runner(tmp_path / 'work', max_iters=4).train()
    return tmp_path / 'work'


# ----------------------------------------------------------------------------------------------- non-finite losses
def test_nan_loss_stops_the_run_before_the_step_and_rotation_keeps_the_finite_checkpoints(tmp_path):
    runner = build_runner(tmp_path, max_iters=8, nan_at={5}, max_keep_ckpts=2)
    with pytest.raises(FloatingPointError, match=r'^loss is nan at iteration 5 \(epoch 1\): training stopped before '
                                                 r'this step updated the weights, and no checkpoint is written from it'
                                                 r'.*lower the learning rate.*max_skips=N'):
        runner.train()
    assert checkpoints(tmp_path) == {'iter_2.pth': 2, 'iter_4.pth': 4}
    assert (tmp_path / 'last_checkpoint').read_text() == f'{tmp_path}/iter_4.pth'
    assert all(bool(torch.isfinite(p).all()) for p in runner.model.parameters())
    assert lock_is_free(tmp_path)  # released by the failed run
    resumed = build_runner(tmp_path, max_iters=8, resume=True, max_keep_ckpts=2)  # e.g. after fixing the data
    resumed.train()
    assert 'resumed epoch: 0, iter: 4' in log_of(resumed)
    assert checkpoints(tmp_path) == {'iter_6.pth': 6, 'iter_8.pth': 8}


class RecordWeight:
    """A hook recording ``linear.weight`` and the BatchNorm buffers after every iteration."""
    priority = 'NORMAL'

    def __init__(self):
        self.weights, self.buffers = [], []

    def __getattr__(self, name):  # every other hook point does nothing
        if name.startswith(('before_', 'after_')):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def after_train_iter(self, runner, *args, **kwargs):
        self.weights.append(runner.model.linear.weight.detach().clone())
        self.buffers.append({k: v.detach().clone() for k, v in runner.model.norm.named_buffers()})


def test_max_skips_skips_that_many_updates_then_stops(tmp_path):
    from mmengine.hooks import Hook
    recorder = type('Recorder', (RecordWeight, Hook), {})()
    skipping = dict(type='mmdualvit.FiniteLossHook', max_skips=1)
    runner = build_runner(tmp_path / 'one', max_iters=6, nan_at={3}, finite_loss=skipping, custom_hooks=[recorder])
    runner.train()
    assert ('loss is nan at iteration 3: skipped this update, and restored the 3 buffers (BatchNorm statistics) its '
            'forward pass changed; the data it drew is not drawn again (1 of at most 1, '
            'default_hooks.finite_loss.max_skips).') in log_of(runner)
    assert torch.equal(recorder.weights[2], recorder.weights[1])  # iteration 3 changed nothing: no step, and
    assert all(torch.equal(recorder.buffers[2][k], recorder.buffers[1][k]) for k in recorder.buffers[1])  # no stats
    assert not torch.equal(recorder.weights[3], recorder.weights[2])
    assert not torch.equal(recorder.buffers[3]['running_mean'], recorder.buffers[2]['running_mean'])
    assert checkpoints(tmp_path / 'one') == {'iter_2.pth': 2, 'iter_4.pth': 4, 'iter_6.pth': 6}

    runner = build_runner(tmp_path / 'two', max_iters=8, nan_at={3, 5}, finite_loss=skipping)
    with pytest.raises(FloatingPointError, match=r'^loss is nan at iteration 5 \(epoch 1\) after skipping 1 such '
                                                 r'iterations \(max_skips=1\): training stopped'):
        runner.train()
    assert checkpoints(tmp_path / 'two') == {'iter_2.pth': 2, 'iter_4.pth': 4}


@pytest.mark.parametrize('value', [-1, 1.5, True, '2'])
def test_max_skips_must_be_a_count(value):
    from mmdualvit.engine import FiniteLossHook
    with pytest.raises(ValueError, match=r'FiniteLossHook: max_skips must be an integer >= 0'):
        FiniteLossHook(max_skips=value)


def test_non_finite_weights_are_never_saved_and_rotation_keeps_the_last_finite_checkpoint(tmp_path):
    """Without the loss hook the NaN reaches the weights; the checkpoint hook still refuses to write them."""
    runner = build_runner(tmp_path, max_iters=6, nan_at={3}, finite_loss=None, max_keep_ckpts=1)
    with pytest.raises(FloatingPointError, match=r'^not saving the checkpoint of iteration 4: \d+ model tensors hold '
                                                 r'NaN or Inf \(linear.weight, .*training has diverged. The '
                                                 r'checkpoints already written are kept'):
        runner.train()
    assert checkpoints(tmp_path) == {'iter_2.pth': 2}
    assert (tmp_path / 'last_checkpoint').read_text() == f'{tmp_path}/iter_2.pth'


class SelfSteppingModel(LineModel):
    """A model whose train_step steps the optimizer itself, not through update_params."""

    def train_step(self, data, optim_wrapper):
        losses = self(**data, mode='loss')
        optim_wrapper.backward(losses['loss'])
        optim_wrapper.step()
        optim_wrapper.zero_grad()
        return {'loss': losses['loss'].detach()}


def test_a_model_that_bypasses_update_params_is_stopped_after_the_iteration(tmp_path, monkeypatch):
    monkeypatch.setattr('tests.toy_runner.LineModel', SelfSteppingModel)
    runner = build_runner(tmp_path, max_iters=6, nan_at={3})
    with pytest.raises(FloatingPointError, match=r'^loss is nan at iteration 3 \(epoch 1\): training stopped after '
                                                 r'this step updated the weights, and no checkpoint is written'):
        runner.train()
    assert checkpoints(tmp_path) == {'iter_2.pth': 2}


# ----------------------------------------------------------------------------------------------- work dirs
@pytest.mark.parametrize('start', ['fresh', 'load_from'])
def test_a_new_run_into_a_work_dir_with_checkpoints_is_refused(trained, start):
    before = snapshot(trained)
    kwargs = dict(load_from=str(trained / 'iter_2.pth')) if start == 'load_from' else {}
    with pytest.raises(WorkDirError, match=re.escape(
            f'{trained} already holds checkpoints (iter_4.pth, iter_2.pth); this new run would overwrite them. Resume '
            f'the newest with --resume (or --resume {trained}/iter_4.pth), train in another work dir (--work-dir), or '
            f'pass --overwrite-work-dir (--cfg-options overwrite_work_dir=True) to replace them.')):
        build_runner(trained, max_iters=2, **kwargs).train()
    assert snapshot(trained) == before and lock_is_free(trained)

    runner = build_runner(trained, max_iters=2, overwrite_work_dir=True, **kwargs)
    runner.train()
    assert snapshot(trained)['iter_2.pth'] != before['iter_2.pth'] and checkpoints(trained)['iter_2.pth'] == 2


def test_resume_from_an_older_checkpoint_is_refused_unless_asked_for(tmp_path):
    work = tmp_path / 'work'
    build_runner(work, max_iters=6).train()
    before = snapshot(work)
    older = str(work / 'iter_2.pth')
    with pytest.raises(WorkDirError, match=re.escape(
            f'--resume {older}: {work} holds newer checkpoints (iter_6.pth, iter_4.pth), which this run would '
            f'overwrite, and checkpoint rotation could then delete the one resumed from. Resume the newest with '
            f'--resume {work}/iter_6.pth, branch off into another work dir (--work-dir NEW_DIR --resume {older}), or '
            f'pass --overwrite-work-dir (--cfg-options overwrite_work_dir=True) to continue here anyway.')):
        build_runner(work, max_iters=8, resume=True, load_from=older, max_keep_ckpts=2).train()
    assert snapshot(work) == before

    branch = build_runner(tmp_path / 'branch', max_iters=4, resume=True, load_from=older)
    branch.train()
    assert 'resumed epoch: 0, iter: 2' in log_of(branch) and snapshot(work) == before
    newest = build_runner(work, max_iters=8, resume=True, load_from=str(work / 'iter_6.pth'))
    newest.train()
    assert 'resumed epoch: 0, iter: 6' in log_of(newest)
    again = build_runner(work, max_iters=4, resume=True, load_from=older, overwrite_work_dir=True)
    again.train()
    assert 'resumed epoch: 0, iter: 2' in log_of(again)


def test_resuming_another_runs_checkpoint_into_a_used_work_dir_is_refused(tmp_path, trained):
    """The resumed message hub's keep_ckpt_ids name the other run's steps: mmengine's rotation would delete this work
    dir's files of those names (here iter_4.pth, the newest of its own run)."""
    other = tmp_path / 'other'
    build_runner(other, max_iters=6, max_keep_ckpts=2).train()
    before = snapshot(trained)
    foreign = str(other / 'iter_6.pth')
    with pytest.raises(WorkDirError, match=re.escape(
            f'--resume {foreign}: the file lies outside {trained}, which holds checkpoints of another run '
            f'(iter_4.pth, iter_2.pth): continuing here would mix two runs, and checkpoint rotation (max_keep_ckpts) '
            f'could delete those files. Resume into a new work dir (--work-dir NEW_DIR --resume {foreign}), or pass '
            f'--overwrite-work-dir (--cfg-options overwrite_work_dir=True) if they may go.')):
        build_runner(trained, max_iters=8, resume=True, load_from=foreign, max_keep_ckpts=2).train()
    assert snapshot(trained) == before
    runner = build_runner(trained, max_iters=8, resume=True, load_from=foreign, max_keep_ckpts=2,
                          overwrite_work_dir=True)
    runner.train()
    assert 'resumed epoch: 0, iter: 6' in log_of(runner) and runner.iter == 8


def test_resume_where_last_checkpoint_names_an_older_file_is_refused(trained):
    (trained / 'last_checkpoint').write_text(f'{trained}/iter_2.pth')
    with pytest.raises(WorkDirError, match=re.escape('holds newer checkpoints (iter_4.pth)')):
        build_runner(trained, max_iters=6, resume=True).train()


@pytest.mark.parametrize('named', ['as the work dir', 'through a link'])
def test_resume_after_a_kill_between_saving_and_updating_last_checkpoint(trained, named):
    """The hook saves iter_4.pth, then points last_checkpoint at it: a run killed in between leaves the pointer at
    iter_2.pth, older than the file written after it. --resume takes iter_4.pth and overwrites nothing, also when the
    pointer names the files through a link to the work dir (the last run was given another spelling of it)."""
    record = trained / 'last_checkpoint'
    spelled = trained
    if named == 'through a link':
        spelled = trained.parent / 'link'
        spelled.symlink_to(trained)
    record.write_text(f'{spelled}/iter_2.pth')
    written = (trained / 'iter_4.pth').stat().st_mtime_ns
    os.utime(record, ns=(written - 10**9, written - 10**9))
    runner = build_runner(trained, max_iters=6, resume=True)
    runner.train()
    log = log_of(runner)
    assert (f'--resume: {record} names {spelled}/iter_2.pth, but {trained}/iter_4.pth is newer and was written after '
            f'it (the last run stopped between saving iter_4.pth and updating {record}); resuming from '
            f'{trained}/iter_4.pth.') in log
    assert 'resumed epoch: 0, iter: 4' in log and runner.iter == 6
    assert checkpoints(trained) == {'iter_2.pth': 2, 'iter_4.pth': 4, 'iter_6.pth': 6}


@pytest.mark.parametrize('record', ['recorded', 'no last_checkpoint'])
def test_a_zero_byte_newest_checkpoint_falls_back_to_the_previous_one(trained, record):
    (trained / 'iter_4.pth').write_bytes(b'')
    if record != 'recorded':
        (trained / 'last_checkpoint').unlink()
    runner = build_runner(trained, max_iters=6, resume=True)
    runner.train()
    log = log_of(runner)
    assert f"'{trained}/iter_4.pth' is truncated or corrupt (EOFError)" in log
    assert f'resuming from the newest readable checkpoint, {trained}/iter_2.pth' in log
    assert 'resumed epoch: 0, iter: 2' in log and runner.iter == 6
    assert checkpoints(trained) == {'iter_2.pth': 2, 'iter_4.pth': 4, 'iter_6.pth': 6}


def test_resume_with_another_optimizer_type_names_the_file_and_the_fix(tmp_path):
    build_runner(tmp_path, max_iters=2, optimizer=dict(type='SGD', lr=0.1, momentum=0.9)).train()
    with pytest.raises(CheckpointError, match=re.escape(
            f'--resume {tmp_path}/iter_2.pth: its optimizer state does not fit the optimizer of this config (AdamW: '
            f'KeyError: ') + '.*' + re.escape(f'new work dir (--work-dir NEW_DIR --cfg-options '
                                              f'load_from={tmp_path}/iter_2.pth).')):
        build_runner(tmp_path, max_iters=4, resume=True, optimizer=dict(type='AdamW', lr=0.1)).train()
    assert checkpoints(tmp_path) == {'iter_2.pth': 2} and lock_is_free(tmp_path)


def test_resume_from_a_file_without_training_state_names_what_it_lacks(trained):
    """An mmcv 1.x checkpoint has no message_hub: refused, naming it; one saved with save_optimizer=False resumes
    with a fresh optimizer, and says so."""
    checkpoint = torch.load(trained / 'iter_4.pth', weights_only=True)
    del checkpoint['optimizer']
    torch.save(checkpoint, trained / 'iter_4.pth')
    runner = build_runner(trained, max_iters=6, resume=True)
    runner.train()
    assert (f'--resume {trained}/iter_4.pth: the file holds no optimizer state (saved with save_optimizer=False): the '
            f'optimizer starts afresh') in log_of(runner)
    checkpoint = torch.load(trained / 'iter_6.pth', weights_only=True)
    del checkpoint['message_hub']
    torch.save(checkpoint, trained / 'iter_6.pth')
    with pytest.raises(CheckpointError, match=re.escape(
            f'--resume {trained}/iter_6.pth: the file holds no message_hub state, so the training cannot continue '
            f'where it stopped')):
        build_runner(trained, max_iters=8, resume=True).train()
    assert lock_is_free(trained)


# ----------------------------------------------------------------------------------------------- one writer
@pytest.mark.slow
def test_a_second_training_and_a_test_run_leave_a_writing_training_alone(tmp_path):
    """A training is held inside the write of iter_4.pth; meanwhile a test run in its work dir deletes nothing and a
    second training is refused by the lock; released, the first training completes every checkpoint."""
    work, release = tmp_path / 'work', tmp_path / 'release'
    proc, temporary = start_paused_writer(work, max_iters=6, release=release)
    try:
        assert temporary.exists()

        tester = build_runner(work, test=True, load_from=str(work / 'iter_2.pth'))
        assert 'toy/mse' in tester.test()
        assert temporary.exists()
        with pytest.raises(WorkDirLockedError, match=re.escape(f'{work} is in use by process {proc.pid} on this '
                                                               f'machine (since ')
                           + r'.*Two trainings in one work dir overwrite each other\'s checkpoints'):
            build_runner(work, max_iters=8, resume=True).train()
        assert temporary.exists()

        release.touch()
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and out.strip().endswith('DONE'), Path(f'{work}.stderr').read_text()[-3000:]
    assert checkpoints(work) == {'iter_2.pth': 2, 'iter_4.pth': 4, 'iter_6.pth': 6}
    assert lock_is_free(work)


HOLD_LOCK = ('import sys, time; from mmdualvit.fileio import lock_work_dir; held = lock_work_dir(sys.argv[1]); '
             'print("HELD", flush=True); time.sleep(120)')


@pytest.mark.parametrize('holder', ['killed process', 'live process', 'other machine', 'unreadable'])
@pytest.mark.slow
def test_the_work_dir_lock(tmp_path, holder, monkeypatch):
    """The lock is the kernel's: released when its process dies, however; while held, a second training is refused
    naming the holder that its holder file records, and tools/train.py refused writes nothing into the work dir."""
    work = tmp_path / 'work'
    env = tool_env()
    proc = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(work), 'train.py x.py'], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == 'HELD'
        recorded = json.loads((work / HOLDER_NAME).read_text())
        assert recorded['pid'] == proc.pid and recorded['command'].endswith('train.py x.py')
        if holder == 'killed process':
            proc.kill()
            proc.wait()
            runner = build_runner(work, max_iters=2)
            runner.train()
            assert checkpoints(work) == {'iter_2.pth': 2} and lock_is_free(work)
            return
        if holder == 'other machine':
            recorded['host'] = 'elsewhere.example'
        text = 'garbage' if holder == 'unreadable' else json.dumps(recorded)
        (work / HOLDER_NAME).write_text(text)
        who = {'live process': f'process {proc.pid} on this machine (since {recorded["since"]}: ',
               'other machine': f"process {proc.pid} on machine 'elsewhere.example' (since",
               'unreadable': f"an unknown process (its {HOLDER_NAME} reads 'garbage')"}[holder]
        refusal = re.escape(f'{work} is in use by {who}') + '.*' + re.escape(
            f'The lock is released when that process ends, however it ends; `lsof {work / LOCK_NAME}` shows')
        listing = sorted(work.rglob('*'))
        monkeypatch.setattr(sys, 'argv', ['train.py', str(TOY_DET), '--work-dir', str(work)])
        with pytest.raises(WorkDirLockedError, match=refusal):  # before mmengine's Runner writes its log folder
            runpy.run_path(str(REPO / 'tools' / 'train.py'))['main']()
        assert sorted(work.rglob('*')) == listing
        with pytest.raises(WorkDirLockedError, match=refusal):
            build_runner(work, max_iters=2).train()
        assert not list(work.glob('*.pth')) and (work / HOLDER_NAME).read_text() == text
    finally:
        proc.kill()
        proc.wait()


def temporary(work: Path) -> Path:
    path = work / f'.iter_8.pth.{uuid.uuid4().hex}{TMP_SUFFIX}'
    path.write_bytes(b'half a checkpoint')
    return path


@pytest.mark.slow
def test_test_runs_take_no_lock_and_delete_nothing(trained):
    dead = temporary(trained)
    before = snapshot(trained)
    tester = build_runner(trained, test=True, load_from=str(trained / 'iter_4.pth'))
    assert 'toy/mse' in tester.test()
    assert dead.exists() and snapshot(trained) == before and lock_is_free(trained)


def test_test_tool_writes_under_a_test_folder_of_the_work_dir(monkeypatch):
    tool = runpy.run_path(str(REPO / 'tools' / 'test.py'))
    seen = {}

    class Runner:
        def test(self):
            return {}

    def build_runner(cfg, compile_backend=None):
        seen['cfg'], seen['compile'] = cfg, compile_backend
        return Runner()
    monkeypatch.setitem(tool['main'].__globals__, 'build_runner', build_runner)
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv', ['test.py', str(TOY_DET), 'model.pth'])
    tool['main']()
    assert seen['cfg'].work_dir == 'work_dirs/maskrcnn_dualvit_toy/test' and seen['compile'] is None
    monkeypatch.setattr(sys, 'argv', ['test.py', str(TOY_DET), 'model.pth', '--work-dir', 'elsewhere'])
    seen.clear()
    tool['main']()
    assert seen['cfg'].work_dir == 'elsewhere'


DISTRIBUTED = '''
import json, sys
import torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
from tests.toy_runner import build_runner
kwargs = json.loads(sys.argv[2])
nan_at = kwargs.pop("nan_at_rank_1", []) if rank == 1 else []
result = open(f"{sys.argv[1]}.rank{rank}", "w")  # the ranks' stdout lines interleave
try:
    build_runner(sys.argv[1], distributed=True, nan_at=nan_at, **kwargs).train()
    result.write(f"RANK {rank} DONE")
except Exception as err:
    result.write(f"RANK {rank} {type(err).__name__}: {err}")
    sys.exit(3)
finally:
    result.close()
    dist.destroy_process_group()
'''


def torchrun(work: Path, **kwargs) -> tuple:
    """Two gloo ranks of the toy runner: the exit status and each rank's outcome (DONE, or the error it raised)."""
    from tests.utils import free_port
    env = tool_env(OMP_NUM_THREADS='1')
    script = work.parent / 'distributed.py'
    script.write_text(DISTRIBUTED)
    try:
        proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                               str(free_port()), str(script), str(work), json.dumps(kwargs)], capture_output=True,
                              text=True, env=env, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail('the two ranks did not finish within 300 s (a rank waits for the other)')
    outcomes = [Path(f'{work}.rank{rank}') for rank in (0, 1)]
    return proc.returncode, [path.read_text() if path.exists() else proc.stderr[-3000:] for path in outcomes]


@pytest.mark.slow
def test_every_rank_stops_when_rank_0_refuses_the_work_dir(trained):
    rc, ranks = torchrun(trained, max_iters=6)
    assert rc != 0 and len(ranks) == 2, ranks
    assert ranks[0].startswith(f'RANK 0 WorkDirError: {trained} already holds checkpoints (iter_4.pth, iter_2.pth)')
    assert ranks[1].startswith(f'RANK 1 WorkDirError: rank 0 refused to start: {trained} already holds checkpoints')


@pytest.mark.parametrize('max_skips', [0, 1])
@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_or_skips_on_every_rank(tmp_path, max_skips):
    work = tmp_path / 'work'
    rc, ranks = torchrun(work, max_iters=6, nan_at_rank_1=[3],
                         finite_loss=dict(type='mmdualvit.FiniteLossHook', max_skips=max_skips))
    if max_skips:
        assert rc == 0 and ranks == ['RANK 0 DONE', 'RANK 1 DONE']
        assert checkpoints(work) == {'iter_2.pth': 2, 'iter_4.pth': 4, 'iter_6.pth': 6}
    else:
        assert rc != 0 and len(ranks) == 2, ranks
        assert ranks[0].startswith('RANK 0 FloatingPointError: loss is nan on another rank at iteration 3 (epoch 1): '
                                   'training stopped before this step updated the weights'), ranks
        assert ranks[1].startswith('RANK 1 FloatingPointError: loss is nan at iteration 3 (epoch 1): training stopped '
                                   'before this step updated the weights'), ranks
        assert checkpoints(work) == {'iter_2.pth': 2}


# ----------------------------------------------------------------------------------------------- resuming
BEYOND_THE_END = '''
import sys, torch
from tests.toy_runner import build_runner
work = sys.argv[1]
build_runner(work, max_iters=4).train()
checkpoint = torch.load(f"{work}/iter_4.pth", weights_only=True)
checkpoint["meta"]["iter"] = 10 ** 9
torch.save(checkpoint, f"{work}/far.pth")
build_runner(work, max_iters=6, resume=True, load_from=f"{work}/far.pth").train()
'''


@pytest.mark.slow
def test_resume_beyond_the_configured_end_is_an_error_not_a_long_fast_forward(tmp_path):
    env = tool_env()
    try:
        proc = subprocess.run([sys.executable, '-c', BEYOND_THE_END, str(tmp_path)], capture_output=True, text=True,
                              env=env, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail('the resumed run was still advancing its data loader after 240 s')
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (f'CheckpointError: --resume: {tmp_path}/far.pth was saved at iteration 1000000000, beyond the end of this '
            f'training (train_cfg.max_iters=6): there is nothing left to train, and mmengine would first advance the '
            f'data loader 1000000000 steps. Raise train_cfg.max_iters above 1000000000 to train further, or resume '
            f'from an earlier checkpoint.') in proc.stderr


def test_resume_names_the_learning_rate_the_checkpoint_replaces(trained):
    runner = build_runner(trained, max_iters=6, resume=True, lr=0.05)
    runner.train()
    assert (f'--resume: {trained}/iter_4.pth replaces optimizer settings of the config: lr=0.1 (config: 0.05). '
            f'mmengine restores the optimizer state on resume, so training continues with the checkpoint\'s values. '
            f'To train with the config\'s, start a new run from its weights instead (in a new work dir, --cfg-options '
            f'load_from={trained}/iter_4.pth).') in log_of(runner)
    assert runner.optim_wrapper.get_lr()['lr'] == [0.1]


def test_a_scheduled_learning_rate_is_compared_by_its_base_value(tmp_path):
    scheduler = dict(type='MultiStepLR', by_epoch=False, begin=0, end=100, milestones=[3], gamma=0.1)
    build_runner(tmp_path, max_iters=4, param_scheduler=scheduler).train()
    same = build_runner(tmp_path, max_iters=6, resume=True, param_scheduler=scheduler)
    same.train()  # the checkpoint's lr is 0.01 by then, the config's base 0.1: nothing replaced
    assert 'replaces optimizer settings' not in log_of(same)
    changed = build_runner(tmp_path, max_iters=8, resume=True, param_scheduler=scheduler, lr=0.5)
    changed.train()
    assert f'{tmp_path}/iter_6.pth replaces optimizer settings of the config: lr=0.1 (config: 0.5).' \
        in log_of(changed)


# ----------------------------------------------------------------------------------------------- through the tools
def train_tool(args, cwd, timeout=600):
    """``tools/train.py ARGS`` in ``cwd``: its exit status and output."""
    proc = run_tool([sys.executable, REPO / 'tools' / 'train.py', *args], cwd, timeout=timeout, check=False)
    return proc.returncode, proc.stdout


@pytest.fixture(scope='module')
def toy_root(tmp_path_factory):
    from mmdualvit.datasets import make_toy_coco
    root = tmp_path_factory.mktemp('toy')
    make_toy_coco(root / 'data' / 'toy_coco', num_train=4, num_val=2, image_size=(64, 64), seed=1)
    return root


@pytest.mark.slow
def test_train_tool_refuses_a_used_work_dir_and_stops_a_diverging_run(toy_root):
    train = [TOY_DET, '--work-dir', 'work']
    rc, out = train_tool([*train, '--cfg-options', 'train_cfg.max_iters=2', *FAST], toy_root)
    assert rc == 0, out[-3000:]
    first = (toy_root / 'work' / 'iter_2.pth').read_bytes()

    dumped = toy_root / 'work' / TOY_DET.name  # the config that trained iter_2.pth
    trained_with = dumped.read_text()
    assert 'max_iters=2' in trained_with

    rc, out = train_tool([*train, '--cfg-options', 'train_cfg.max_iters=3', *FAST], toy_root)
    assert rc == 1 and f'WorkDirError: {toy_root}/work already holds checkpoints (iter_2.pth)' in out, out[-3000:]
    assert '--overwrite-work-dir' in out and (toy_root / 'work' / 'iter_2.pth').read_bytes() == first
    assert dumped.read_text() == trained_with  # the refused run did not replace it

    # Allowed to overwrite, with a learning rate that makes it diverge: it stops, and iter_2.pth stays finite.
    rc, out = train_tool([*train, '--overwrite-work-dir', '--cfg-options', 'train_cfg.max_iters=4',
                          'optim_wrapper.optimizer.lr=1e30', *FAST], toy_root)
    assert rc == 1 and 'FloatingPointError: ' in out, out[-3000:]
    assert checkpoints(toy_root / 'work') == {'iter_2.pth': 2}


@pytest.mark.slow
def test_train_tool_names_the_annotation_file_when_no_box_is_valid(toy_root, tmp_path):
    import shutil
    data = tmp_path / 'data' / 'toy_coco'
    shutil.copytree(toy_root / 'data' / 'toy_coco', data)
    ann_file = data / 'annotations' / 'instances_train.json'
    coco = json.loads(ann_file.read_text())
    for ann in coco['annotations']:
        ann['bbox'][2] = 0  # zero width
    ann_file.write_text(json.dumps(coco))
    rc, out = train_tool([TOY_DET, '--work-dir', 'work', '--cfg-options',
                          'train_cfg.max_iters=2', *FAST], tmp_path, timeout=300)
    assert rc == 1, out[-3000:]
    assert "ValueError: annotation file 'data/toy_coco/annotations/instances_train.json': no annotation to train on" \
        in out
    assert not list((tmp_path / 'work').glob('*.pth'))


@pytest.mark.parametrize('options, saved_in', [
    (dict(out_dir='elsewhere'), 'elsewhere/work'), (dict(filename_tmpl='ckpt_{:04d}.pth'), 'work'),
    (dict(out_dir='elsewhere', filename_tmpl='model_{}.pt'), 'elsewhere/work'),
    (dict(out_dir='work/'), 'work/work')])  # the work dir written otherwise: mmengine compares the strings
def test_checkpoints_are_found_wherever_the_hook_writes_them(tmp_path, options, saved_in):
    """The overwrite check and the resume scan follow the checkpoint hook's out_dir (mmengine saves into
    out_dir/<work dir's name> unless out_dir is the work dir's very string) and filename_tmpl: a second run without
    --resume is refused, --resume continues from the newest of them, also without last_checkpoint."""
    work = tmp_path / 'work'
    options = {k: f'{tmp_path}/{v}' if k == 'out_dir' else v for k, v in options.items()}
    build_runner(work, max_iters=4, checkpoint_options=options).train()
    saved = sorted((tmp_path / saved_in).glob('*_*.pt*'))
    assert len(saved) == 2 and not list(work.glob('iter_*.pth'))
    before = {p: p.stat().st_mtime_ns for p in saved}
    with pytest.raises(WorkDirError, match=rf'already holds checkpoints \({saved[1].name}, {saved[0].name}\); this '
                                           r'new run would overwrite them'):
        build_runner(work, max_iters=4, checkpoint_options=options).train()
    assert {p: p.stat().st_mtime_ns for p in saved} == before
    (work / 'last_checkpoint').unlink()
    resumed = build_runner(work, max_iters=6, resume=True, checkpoint_options=options)
    resumed.train()
    assert resumed.iter == 6 and f'resuming from the newest readable checkpoint, {saved[1]}' in \
        Path(resumed.log_dir, f'{resumed.timestamp}.log').read_text()


@pytest.mark.parametrize('odd', ['directory', 'dangling link', 'link to a file', 'holder record a directory'])
def test_a_lock_path_that_is_not_a_lock_file_is_named(tmp_path, odd):
    work = tmp_path / 'work'
    work.mkdir()
    lock = work / (HOLDER_NAME if odd.startswith('holder') else LOCK_NAME)
    if odd.endswith('directory'):
        lock.mkdir()
    else:
        target = tmp_path / 'elsewhere.json'
        if odd == 'link to a file':
            target.write_text(json.dumps(dict(pid=1, host='x')))
        lock.symlink_to(target)
    kind = 'a directory' if odd.endswith('directory') else 'a symbolic link'
    with pytest.raises(WorkDirLockedError, match=re.escape(f'{lock} is {kind}, not a lock file of mmdualvit, so no '
                                                           f'training can take this work dir\'s lock. If no training '
                                                           f'uses {work}, remove it (rm -r {lock})')):
        build_runner(work, max_iters=2).train()
    assert not list(work.glob('*.pth'))


def test_a_work_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / 'work').write_text('')
    with pytest.raises(WorkDirLockedError, match=re.escape(f"cannot train in {tmp_path}/work: '{tmp_path}/work' is a "
                                                           f"file, not a directory; give another --work-dir.")):
        lock_work_dir(tmp_path / 'work')
