"""Tests of the Sequencer2D backbone against the official key lists and reference outputs in tests/data."""
import math

import pytest
import torch
import torch.nn as nn

import mmdualvit  # noqa: F401  (registers the models)
from mmdualvit.models import Sequencer2D
from tests.utils import (assert_matches, grads_and_outputs, load_reference_weights, matches, official_keys,
                   reference_features, reference_input, stored_inputs)

LAYERS = {'s': [4, 3, 8, 3], 'm': [4, 3, 14, 3], 'l': [8, 8, 16, 4]}
ALIASES = {'small': 's', 'medium': 'm', 'large': 'l'}
CHANNELS = [192, 384, 384, 384]
PYRAMID_STRIDES = [4, 8, 16, 32]
CLASSIFIER_ONLY = {'head.weight', 'head.bias'}


def _name(arch):
    return f'sequencer2d_{arch}'


def _shapes(state_dict):
    return {k: list(v.shape) for k, v in state_dict.items()}


def _backbone_spec(arch):
    return {k: shape for k, (shape, _) in official_keys(_name(arch)).items() if k not in CLASSIFIER_ONLY}


def _reference_model(arch='s', **kwargs):
    return load_reference_weights(Sequencer2D(arch=arch, **kwargs), _name(arch)).eval()


# ---------------------------------------------------------------------------------------------- arch table
@pytest.mark.parametrize('arch', ['s', 'small', 'm', 'medium', 'l', 'large', 'M'])
def test_arch_names(arch):
    key = ALIASES.get(arch.lower(), arch.lower())
    model = Sequencer2D(arch=arch)
    assert model.layers == LAYERS[key]
    assert model.out_channels == CHANNELS
    assert model.native_strides == [7, 14, 14, 14]
    assert [len(stage) for stage in model.blocks] == [n + 1 for n in LAYERS[key][:3]] + [LAYERS[key][3]]


def test_unknown_arch_name():
    with pytest.raises(ValueError, match='xl'):
        Sequencer2D(arch='xl')


TINY = dict(layers=[1, 1, 1, 1], patch_sizes=[7, 2, 1, 1], embed_dims=[16, 24, 24, 32], hidden_sizes=[4, 6, 6, 8],
            mlp_ratio=2.0)


def test_custom_arch_dict():
    model = Sequencer2D(arch=dict(TINY), pyramid='native').eval()
    assert model.out_channels == [16, 24, 24, 32]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 56, 70))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 8, 10), (1, 24, 4, 5), (1, 24, 4, 5), (1, 32, 4, 5)]


def test_custom_arch_dict_errors():
    with pytest.raises(ValueError, match='hidden_sizes'):
        Sequencer2D(arch={k: v for k, v in TINY.items() if k != 'hidden_sizes'})
    with pytest.raises(ValueError, match='union'):
        Sequencer2D(arch=dict(TINY, union='cat'))
    with pytest.raises(ValueError):
        Sequencer2D(arch=dict(TINY, layers=[1, 1, 1]))
    with pytest.raises(TypeError):
        Sequencer2D(arch=['s'])


@pytest.mark.parametrize('pyramid', ['fpn', 'Native', None])
def test_bad_pyramid(pyramid):
    with pytest.raises(ValueError, match='pyramid'):
        Sequencer2D(arch='s', pyramid=pyramid)


@pytest.mark.parametrize('kwargs', [
    dict(frozen_stages=5),
    dict(frozen_stages=-2),
    dict(out_indices=(4, )),
    dict(out_indices=(1, 1)),
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        Sequencer2D(arch='s', **kwargs)


def test_pyramid_needs_four_stages():
    three = dict(TINY, layers=[1, 1, 1], patch_sizes=[7, 2, 1], embed_dims=[16, 24, 24], hidden_sizes=[4, 6, 6])
    assert Sequencer2D(arch=three, pyramid='native', out_indices=(0, 1, 2)).num_stages == 3
    with pytest.raises(ValueError, match='native'):
        Sequencer2D(arch=three, pyramid='resample', out_indices=(0, 1, 2))


# ---------------------------------------------------------------------------------------------- keys
@pytest.mark.parametrize('pyramid', ['native', 'resample'])
@pytest.mark.parametrize('arch', ['s', 'm', 'l'])
def test_state_dict_matches_official_keys(arch, pyramid):
    spec = official_keys(_name(arch))
    assert CLASSIFIER_ONLY <= set(spec)
    sd = Sequencer2D(arch=arch, pyramid=pyramid).state_dict()
    assert _shapes(sd) == _backbone_spec(arch)
    assert all(sd[k].dtype == torch.float32 for k in sd)


@pytest.mark.parametrize('arch', ['s', 'm', 'l'])
def test_learned_pyramid_adds_only_adapters(arch):
    sd = Sequencer2D(arch=arch, pyramid='learned').state_dict()
    expected = dict(_backbone_spec(arch))
    for i, c in enumerate(CHANNELS):
        expected[f'pyramid_adapters.{i}.weight'] = [c, c, 3, 3]
        expected[f'pyramid_adapters.{i}.bias'] = [c]
    assert _shapes(sd) == expected
    assert all(not sd[f'pyramid_adapters.{i}.{p}'].any() for i in range(4) for p in ('weight', 'bias'))


# ---------------------------------------------------------------------------------------------- reference outputs
@pytest.fixture(scope='module', params=['s', 'm', 'l'])
def native_model(request):
    return request.param, _reference_model(request.param, pyramid='native')


def test_reference_inputs_cover_all_stored_arrays():
    for arch in 'sml':
        expected = ['in196x252', 'in224x224'] if arch == 's' else ['in196x252']
        assert sorted(stored_inputs(_name(arch))) == expected
        names = {k for k in reference_features(_name(arch)) if k != 'cls224_logits'}
        assert names == {f'{n}_out{s}' for n in expected for s in ('0', '1', '2', '3', '3_norm')}


def test_reference_outputs(native_model):
    arch, model = native_model
    ref = reference_features(_name(arch))
    for name in stored_inputs(_name(arch)):
        with torch.no_grad():
            outs = model(reference_input(name))
            normed = model.norm(outs[3].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert len(outs) == 4
        for i, out in enumerate(outs):
            assert_matches(out, ref[f'{name}_out{i}'], f'{arch} {name} out{i}')
        assert_matches(normed, ref[f'{name}_out3_norm'], f'{arch} {name} out3_norm')


def test_reference_negative_control():
    """The check catches LayerNorm eps 1e-5 instead of 1e-6 (a slip the README lists)."""
    model = _reference_model('s', pyramid='native')
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * sum(LAYERS['s']) + 1 and all(m.eps == 1e-6 for m in norms)
    for m in norms:
        m.eps = 1e-5
    ref = reference_features('sequencer2d_s')
    with torch.no_grad():
        outs = model(reference_input('in196x252'))
        normed = model.norm(outs[3].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    results = [matches(out, ref[f'in196x252_out{i}']) for i, out in enumerate(outs)]
    results.append(matches(normed, ref['in196x252_out3_norm']))
    assert not any(results)


# ---------------------------------------------------------------------------------------------- output sizes
def test_native_sizes():
    model = _reference_model('s', pyramid='native')
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 97, 131))
    h0, w0 = 97 // 7, 131 // 7
    assert (h0, w0) == (13, 18)
    expected = [(2, 192, h0, w0)] + [(2, 384, h0 // 2, w0 // 2)] * 3
    assert [tuple(o.shape) for o in outs] == expected


def test_native_minimum_size():
    model = Sequencer2D(arch=dict(TINY), pyramid='native').eval()
    with pytest.raises(ValueError, match='14'):
        model(torch.randn(1, 3, 13, 64))
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 14, 14))
    assert [tuple(o.shape[2:]) for o in outs] == [(2, 2), (1, 1), (1, 1), (1, 1)]


def _pyramid_shapes(batch, height, width, indices=(0, 1, 2, 3)):
    return [(batch, CHANNELS[i], math.ceil(height / PYRAMID_STRIDES[i]), math.ceil(width / PYRAMID_STRIDES[i]))
            for i in indices]


@pytest.mark.parametrize('pyramid', ['resample', 'learned'])
@pytest.mark.parametrize('size', [(97, 131), (224, 224), pytest.param((800, 1344), marks=pytest.mark.slow)])
def test_pyramid_sizes(pyramid, size):
    model = Sequencer2D(arch='s', pyramid=pyramid).eval()
    assert model.out_channels == CHANNELS
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert [tuple(o.shape) for o in outs] == _pyramid_shapes(1, *size)
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('pyramid', ['resample', 'learned'])
def test_pyramid_out_indices(pyramid):
    model = Sequencer2D(arch='s', pyramid=pyramid, out_indices=(1, 3)).eval()
    assert model.out_channels == [384, 384]
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 61, 45))
    assert [tuple(o.shape) for o in outs] == _pyramid_shapes(2, 61, 45, (1, 3))


def test_learned_equals_resample_at_init():
    resample = _reference_model('s', pyramid='resample')
    learned = Sequencer2D(arch='s', pyramid='learned').eval()
    sd = dict(resample.state_dict())
    sd.update({k: v for k, v in learned.state_dict().items() if k.startswith('pyramid_adapters.')})
    learned.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        a, b = resample(x), learned(x)
    for out_a, out_b in zip(a, b):
        assert torch.equal(out_a, out_b)
    # ... and the adapters are live: non-zero adapters change the output
    with torch.no_grad():
        learned.pyramid_adapters[0].bias.fill_(1.0)
        c = learned(x)
    assert not torch.equal(c[0], a[0]) and torch.equal(c[1], a[1])


def _resample_matrix(n_in, n_out, scale):
    """(n_out, n_in) matrix of bilinear resampling by ``scale`` with half-pixel centres, written out from the
    definition: linear interpolation (edge-clamped) when enlarging, a normalised triangle filter of half-width
    1/scale (antialiasing) when shrinking."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for k in range(n_out):
        if scale >= 1:
            src = min(max((k + 0.5) / scale - 0.5, 0.0), n_in - 1)
            i0 = math.floor(src)
            i1, w = min(i0 + 1, n_in - 1), src - i0
            m[k, i0] += 1 - w
            m[k, i1] += w
        else:
            centre = (k + 0.5) / scale
            for j in range(n_in):
                m[k, j] = max(0.0, 1 - abs(j + 0.5 - centre) * scale)
            m[k] /= m[k].sum()
    return m


def test_resample_geometry():
    """At 224x224 no padding is needed: level i is the native stage output (normalised for the last stage)
    resampled from stride 7/14/14/14 to 4/8/16/32 with exact geometry (cell centres at (k + 0.5) * stride)."""
    native = _reference_model('s', pyramid='native')
    resample = _reference_model('s', pyramid='resample')
    x = reference_input('in224x224')
    with torch.no_grad():
        outs = resample(x)
        levels = list(native(x))
        levels[3] = native.norm(levels[3].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    for i, (out, level) in enumerate(zip(outs, levels)):
        scale = [7, 14, 14, 14][i] / PYRAMID_STRIDES[i]
        size = 224 // PYRAMID_STRIDES[i]
        assert out.shape == (1, CHANNELS[i], size, size)
        m = _resample_matrix(level.shape[-1], size, scale)
        expected = torch.einsum('yh,bchw,xw->bcyx', m, level.double(), m).float()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=2e-5, msg=f'level {i}')


# ---------------------------------------------------------------------------------------------- training options
def test_frozen_stages():
    model = Sequencer2D(arch='s', frozen_stages=2).train()
    for name, param in model.named_parameters():
        frozen = name.startswith(('stem.', 'blocks.0.')) or any(name.startswith(f'blocks.1.{j}.') for j in range(3))
        assert param.requires_grad != frozen, name
    frozen_modules = [model.stem, *model.blocks[0], *model.blocks[1][:3]]
    assert all(not m.training for module in frozen_modules for m in module.modules())
    trainable_modules = [model.blocks[1][3], *model.blocks[2], *model.blocks[3], model.norm]
    assert all(m.training for module in trainable_modules for m in module.modules())
    model.train()
    assert not model.blocks[1][0].training and not model.stem.proj.weight.requires_grad


def test_frozen_all_stages():
    model = Sequencer2D(arch='s', frozen_stages=4, pyramid='learned').train()
    for name, param in model.named_parameters():
        assert param.requires_grad == name.startswith('pyramid_adapters.'), name
    assert not model.norm.training and model.pyramid_adapters.training


def test_drop_path_rule():
    rate = 0.1
    model = Sequencer2D(arch='s', drop_path_rate=rate)
    layers = LAYERS['s']
    total = sum(layers)
    for i, depth in enumerate(layers):
        for j in range(depth):
            block = model.blocks[i][j]
            expected = rate * (j + sum(layers[:i])) / (total - 1)
            if i == 0 and j == 0:
                assert isinstance(block.drop_path, nn.Identity)
            else:
                assert block.drop_path.drop_prob == pytest.approx(expected)
    assert model.blocks[3][layers[3] - 1].drop_path.drop_prob == pytest.approx(rate)


@pytest.mark.parametrize('pyramid', ['resample', 'native'])
def test_with_cp_equivalence(pyramid, monkeypatch):
    import torch.utils.checkpoint as cp
    calls = []
    original = cp.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cp, 'checkpoint', counting_checkpoint)
    plain = _reference_model('s', pyramid=pyramid)
    ckpt = Sequencer2D(arch='s', pyramid=pyramid, with_cp=True)
    ckpt.load_state_dict(plain.state_dict(), strict=True)
    plain.train(), ckpt.train()
    x = torch.randn(2, 3, 56, 84, generator=torch.Generator().manual_seed(0))
    outs_plain, grads_plain = grads_and_outputs(plain, x)
    assert not calls
    outs_ckpt, grads_ckpt = grads_and_outputs(ckpt, x)
    assert len(calls) == sum(LAYERS['s'])
    for a, b in zip(outs_plain, outs_ckpt):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    trainable = {n for n, p in plain.named_parameters()}
    if pyramid == 'native':  # the final norm is not used by the native outputs
        trainable -= {'norm.weight', 'norm.bias'}
    assert set(grads_plain) == set(grads_ckpt) == trainable
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- registries
@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_build_from_downstream_registry(scope):
    import importlib

    from mmengine.registry import DefaultScope
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(dict(type='mmdualvit.Sequencer2D', arch='m', pyramid='learned', out_indices=(0, 2)))
    assert type(model) is Sequencer2D
    assert model.layers == LAYERS['m'] and model.pyramid == 'learned' and model.out_indices == (0, 2)
    assert len(model.pyramid_adapters) == 2


@pytest.mark.parametrize('rate', [1.0, 1.5, -0.1, float('nan')])
def test_drop_path_rate_outside_unit_interval_is_an_error(rate):
    with pytest.raises(ValueError, match=r'Sequencer2D: drop_path_rate must be in \[0, 1\), got '):
        Sequencer2D(arch='s', drop_path_rate=rate)


def test_no_norm_eval_argument():
    """Sequencer2D has no BatchNorm, so a norm_eval flag would be accepted and do nothing: it is refused."""
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in Sequencer2D(arch='s').modules())
    with pytest.raises(TypeError, match='norm_eval'):
        Sequencer2D(arch='s', norm_eval=True)
