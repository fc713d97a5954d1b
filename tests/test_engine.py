"""Runner pieces: atomic checkpoint writes, weights_only-safe message hub, CPU autocast, the process group."""
import io
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, MessageHub

import mmdualvit  # noqa: F401
from mmdualvit.engine import CPUAutocastOptimWrapper
from mmdualvit.engine.hooks import checkpoint_from_plain, checkpoint_to_plain
from mmdualvit.engine.launch import distributed_session
from mmdualvit.fileio import HOLDER_NAME, AtomicLocalBackend, lock_work_dir, unlock_work_dir
from tests.utils import free_port, lock_can_be_taken


def test_atomic_backend_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    target = tmp_path / 'iter_2.pth'
    backend = AtomicLocalBackend()
    backend.put(b'complete checkpoint', target)

    def crash(src, dst):
        raise KeyboardInterrupt('killed while renaming')
    monkeypatch.setattr('os.replace', crash)
    with pytest.raises(KeyboardInterrupt):
        backend.put(b'half', target)
    assert target.read_bytes() == b'complete checkpoint'
    assert [p.name for p in tmp_path.iterdir()] == ['iter_2.pth']


def test_atomic_backend_text_and_selection_by_name(tmp_path):
    from mmengine.fileio import get_file_backend
    backend = get_file_backend(str(tmp_path), backend_args=dict(backend='mmdualvit_atomic_local'))
    assert isinstance(backend, AtomicLocalBackend)
    backend.put_text('work/iter_4.pth', tmp_path / 'last_checkpoint')
    assert (tmp_path / 'last_checkpoint').read_text() == 'work/iter_4.pth'


def test_message_hub_checkpoint_loads_with_weights_only():
    hub = MessageHub.get_instance('test_engine_hub')
    hub.update_scalar('train/loss', 1.5)
    hub.update_scalar('train/lr', 0.1)
    checkpoint = {'message_hub': hub.state_dict(), 'meta': {'iter': 3}}
    raw = io.BytesIO()
    torch.save(checkpoint, raw)
    raw.seek(0)
    with pytest.raises(Exception, match='HistoryBuffer'):  # plain mmengine pickles the buffer objects
        torch.load(raw, weights_only=True)
    checkpoint_to_plain(checkpoint)
    safe = io.BytesIO()
    torch.save(checkpoint, safe)
    safe.seek(0)
    loaded = torch.load(safe, weights_only=True)
    assert loaded['message_hub']['log_scalars']['train/loss']['log_history'] == [1.5]  # plain lists
    checkpoint_from_plain(loaded)
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.current() == 1.5 and buffer.mean() == 1.5
    restored = MessageHub.get_instance('test_engine_restored')
    restored.load_state_dict(loaded['message_hub'])
    assert restored.get_scalar('train/lr').current() == 0.1


def test_cpu_autocast_wrapper_runs_bfloat16():
    model = torch.nn.Linear(4, 2)
    wrapper = CPUAutocastOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().sum())
    assert model.weight.grad is None  # update_params zeroes the gradients after the step


def test_cpu_autocast_wrapper_covers_the_backbone_only():
    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 4))
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            features = self.backbone(x)
            assert features.dtype == torch.float32  # handed on in float32
            return self.head(features)

    model = Detector()
    wrapper = CPUAutocastOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    inner = []
    model.backbone[0].register_forward_hook(lambda m, i, o: inner.append(o.dtype))
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    assert inner == [torch.bfloat16] and out.dtype == torch.float32
    assert 'forward' not in vars(model.backbone)  # restored


@pytest.fixture
def single_process_env(monkeypatch):
    """torchrun's variables for a world of one, on a free port; any group left behind is destroyed afterwards."""
    for name, value in dict(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()), RANK='0', LOCAL_RANK='0',
                            WORLD_SIZE='1').items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize('fails', [False, True], ids=['returns', 'raises'])
def test_distributed_session_sets_up_gloo_and_always_destroys_the_group(single_process_env, fails):
    """A gloo group left to interpreter exit can abort a finished run (exit -6); the tools' session destroys it."""
    cfg = Config(dict(launcher='pytorch', find_unused_parameters=True))
    with pytest.raises(RuntimeError, match='training failed') if fails else nullcontext():
        with distributed_session(cfg):
            assert dist.is_initialized() and dist.get_backend() == 'gloo'
            total = torch.ones(3)
            dist.all_reduce(total)
            assert total.tolist() == [1.0, 1.0, 1.0]
            if fails:
                raise RuntimeError('training failed')
    assert not dist.is_initialized()
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                                         find_unused_parameters=True)


def test_distributed_session_without_a_launcher_starts_no_group():
    cfg = Config(dict(launcher='none'))
    with distributed_session(cfg):
        assert not dist.is_initialized()
    assert 'model_wrapper_cfg' not in cfg


def test_distributed_session_on_gpus_initialises_the_group_as_mmengines_runner_would(monkeypatch):
    """Before the runner is built (tools/train.py takes the work dir's lock on rank 0 first), with the config's
    dist_cfg; the DDP wrapper stays mmengine's."""
    from mmdualvit.engine import launch
    calls = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(launch, 'init_dist', lambda launcher, **kwargs: calls.append((launcher, kwargs)))
    cfg = Config(dict(launcher='slurm', env_cfg=dict(dist_cfg=dict(backend='nccl', port=29510))))
    with distributed_session(cfg):
        assert calls == [('slurm', dict(backend='nccl', port=29510))]
    assert 'model_wrapper_cfg' not in cfg


def test_the_work_dir_lock_nests_within_one_process(tmp_path):
    """tools/train.py holds it while the runner's train() takes it again; only the last release frees it."""
    outer = lock_work_dir(tmp_path)
    unlock_work_dir(lock_work_dir(tmp_path))
    assert not lock_can_be_taken(tmp_path) and (tmp_path / HOLDER_NAME).exists()
    unlock_work_dir(outer)
    assert lock_can_be_taken(tmp_path) and not (tmp_path / HOLDER_NAME).exists()
