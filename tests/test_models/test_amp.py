"""Mixed precision: bfloat16 autocast on CPU stays within a measured bound of float32, and trains."""
import pytest
import torch

from mmdualvit.models import DualViT, Sequencer2D
from tests.utils import load_reference_weights, reference_input

# Measured (reference weights, 160x256, 2026-11-24): bf16 vs fp32 per output, in units of the fp32 std:
# mean |Δ| 0.005-0.008, max |Δ| 0.03-0.07 (bfloat16 keeps 8 mantissa bits, ~0.4% per rounding).
# The bound below leaves headroom of ~1.3x on the mean and ~1.5x on the max.
MEAN_BOUND, MAX_BOUND = 0.01, 0.1


@pytest.mark.parametrize('name,model', [('dualvit_s', lambda: DualViT('s')),
                                        ('sequencer2d_s', lambda: Sequencer2D('s', pyramid='resample'))])
def test_bfloat16_autocast_matches_float32(name, model, reference_weights):
    model = load_reference_weights(model(), reference_weights(name)).eval()
    x = reference_input('in160x256')
    with torch.no_grad():
        full = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    for a, b in zip(full, low):
        diff = (b.float() - a).abs() / a.std()
        assert diff.mean() <= MEAN_BOUND and diff.max() <= MAX_BOUND, (diff.mean(), diff.max())
    assert any(b.dtype == torch.bfloat16 for b in low) or name == 'dualvit_s'


def test_bfloat16_training_step_of_toy_detector():
    from pathlib import Path

    from mmdualvit.building import build_from_config, synthetic_batch
    from mmdualvit.engine import CPUAutocastOptimWrapper
    config = str(Path(__file__).resolve().parents[2] / 'configs' / 'toy' / 'maskrcnn_dualvit_toy.py')
    model, cfg = build_from_config(config)
    model.init_weights()
    model.train()
    wrapper = CPUAutocastOptimWrapper(optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    batch = synthetic_batch(cfg, (64, 96), batch_size=2)
    before = model.backbone.q.detach().clone()
    losses = model.train_step(batch, wrapper)
    assert all(torch.isfinite(v) for v in losses.values())
    assert not torch.equal(before, model.backbone.q)


def test_autocast_enabled_follows_torch_autocast():
    """The backbones' autocast query works on every supported torch (torch < 2.4's takes no device type) and
    answers per device."""
    from mmdualvit.models.utils import autocast_enabled
    assert not autocast_enabled('cpu') and not autocast_enabled('cuda')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert autocast_enabled('cpu') and not autocast_enabled('cuda')
    assert not autocast_enabled('cpu')
