"""GPU checks (marker ``cuda``; skipped without a CUDA device, see conftest.py). ``make gpu-check`` runs them.

They cover what only a GPU exercises: both backbones on CUDA against the CPU reference, one fp16 AmpOptimWrapper
training step of each detector/segmentor family at real widths, Dual-ViT's attention on a fused SDPA kernel, and
Sequencer2D's LSTMs on cuDNN in deterministic mode.
"""
import re
import sys
import textwrap

import pytest
import torch

from mmdualvit.models import DualViT, Sequencer2D
from tests.utils import REPO, assert_matches, load_reference_weights, reference_features, reference_input, run_tool

pytestmark = pytest.mark.cuda


@pytest.fixture
def no_tf32():
    """Full fp32 matmuls/convolutions: TF32 (10 mantissa bits) would exceed the reference tolerance by design."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _kernel_names(fn):
    """Names of the operators and kernels ``fn()`` ran, as recorded by the profiler."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [event.name for event in prof.events()]


@pytest.mark.parametrize('name,build', [('dualvit_s', lambda: DualViT('s')),
                                        ('sequencer2d_s', lambda: Sequencer2D('s', pyramid='native'))])
def test_backbone_on_cuda_matches_cpu_reference(name, build, no_tf32, reference_weights):
    model = load_reference_weights(build(), reference_weights(name)).eval().cuda()
    ref = reference_features(name)
    for input_name in ('in160x256',) if name == 'dualvit_s' else ('in196x252',):
        with torch.no_grad():
            outs = model(reference_input(input_name).cuda())
        for i, out in enumerate(outs):
            assert_matches(out.cpu(), ref[f'{input_name}_out{i}'], f'{name} {input_name} out{i} on CUDA')


@pytest.mark.parametrize('config,shape,batch_size', [
    ('maskrcnn_dualvit_s_coco.py', (256, 320), 2),
    ('retinanet_dualvit_s_coco.py', (256, 320), 2),
    ('upernet_dualvit_s_ade20k.py', (256, 256), 2),  # 2 images: the BN pyramid-pooling head cannot train on 1
    ('maskrcnn_sequencer2d_s_coco.py', (256, 320), 2),
    ('upernet_sequencer2d_s_ade20k.py', (256, 256), 2),
])
def test_fp16_amp_training_step(config, shape, batch_size):
    from mmengine.optim import AmpOptimWrapper, build_optim_wrapper

    from mmdualvit.building import build_from_config, synthetic_batch
    model, cfg = build_from_config(str(REPO / 'configs' / config))
    if cfg.default_scope == 'mmseg':
        model.data_preprocessor.size = shape
    model.init_weights()
    model.cuda().train()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert isinstance(wrapper, AmpOptimWrapper) and wrapper.cast_dtype in (None, torch.float16)

    dtypes = []
    model.backbone.register_forward_hook(lambda module, args, outs: dtypes.extend(o.dtype for o in outs))
    with wrapper.optim_context(model):
        data = model.data_preprocessor(synthetic_batch(cfg, shape, batch_size), True)
        loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.float16 in dtypes, f'backbone did not run in fp16 under the AmpOptimWrapper: {dtypes}'
    assert torch.isfinite(loss), loss
    wrapper.backward(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads) > 0.9 * sum(p.requires_grad for p in model.parameters())
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f'non-finite gradients (loss scale 512) in {bad[:5]}'
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in grads}
    wrapper.step()
    changed = sum(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    assert changed > 0.9 * len(before), 'the fp16 step was skipped (GradScaler found inf/nan)'


def test_dualvit_attention_uses_fused_sdpa_kernel_in_fp16():
    model = DualViT('s').eval().cuda()
    x = torch.randn(2, 3, 256, 320, device='cuda')

    def run():
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16):
            model(x)

    run()  # warm-up outside the profile
    names = _kernel_names(run)
    sdpa = [n for n in names if n.startswith('aten::_scaled_dot_product') or n == 'aten::_efficient_attention_forward'
            or n == 'aten::_flash_attention_forward']
    fused = [n for n in sdpa if 'flash' in n or 'efficient' in n or 'cudnn' in n]
    math = [n for n in sdpa if 'math' in n]
    assert fused, f'no fused SDPA kernel ran; SDPA events: {sorted(set(sdpa))}'
    assert not math, f'attention fell back to the math kernel: {sorted(set(sdpa))}'


def test_sequencer_lstm_on_cudnn_is_deterministic():
    """README: cuDNN LSTMs are deterministic only with CUBLAS_WORKSPACE_CONFIG set before CUDA starts (a fresh
    process here) and deterministic algorithms on; then two forward/backward passes agree bit for bit.

    ``:16:8`` is the value both torch.nn.LSTM's documentation and torch.use_deterministic_algorithms accept (the
    latter refuses cuBLAS calls under ``:4096:2``)."""
    script = textwrap.dedent('''
        import torch
        from mmdualvit.models import Sequencer2D
        from torch.profiler import ProfilerActivity, profile
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        results = []
        for _ in range(2):
            torch.manual_seed(0)
            # pyramid='native': no bilinear resampling, whose CUDA backward has no deterministic implementation
            model = Sequencer2D('s', pyramid='native').cuda().train()
            x = torch.randn(2, 3, 224, 224, device='cuda')
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                loss = sum(o.float().square().mean() for o in model(x))
                loss.backward()
            cudnn = sum('cudnn_rnn' in e.name for e in prof.events())
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            results.append((loss.detach(), grads, cudnn))
        (loss_a, grads_a, cudnn_a), (loss_b, grads_b, _) = results
        assert cudnn_a > 0, 'the LSTMs did not run on cuDNN'
        assert torch.equal(loss_a, loss_b) and torch.equal(grads_a, grads_b), 'not deterministic'
        print('ok', cudnn_a)
    ''')
    out = run_tool([sys.executable, '-c', script], cwd=None, env=dict(CUBLAS_WORKSPACE_CONFIG=':16:8'),
                   timeout=600).stdout
    assert re.search(r'^ok \d+$', out, re.M), out[-3000:]
