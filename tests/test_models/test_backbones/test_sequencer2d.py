"""Tests of the Sequencer2D backbone against the official key lists and reference outputs in tests/data."""
import math

import pytest
import torch
import torch.nn as nn

import mmdualvit  # noqa: F401  (registers the models)
from mmdualvit.models import Sequencer2D
from tests.utils import (assert_matches, load_reference_weights, matches, official_keys, reference_features,
                         reference_input, stored_inputs)

DEPTHS = {'s': [4, 3, 8, 3], 'm': [4, 3, 14, 3], 'l': [8, 8, 16, 4]}
CHANNELS = [192, 384, 384, 384]
PYRAMID_STRIDES = [4, 8, 16, 32]
CLASSIFIER_ONLY = {'head.weight', 'head.bias'}


def _name(arch):
    return f'sequencer2d_{arch}'


def _shapes(state_dict):
    return {k: list(v.shape) for k, v in state_dict.items()}


def _backbone_spec(arch):
    return {k: shape for k, (shape, _) in official_keys(_name(arch)).items() if k not in CLASSIFIER_ONLY}


def _reference_model(reference_weights, arch='s', **kwargs):
    return load_reference_weights(Sequencer2D(arch=arch, **kwargs), reference_weights(_name(arch))).eval()


# ---------------------------------------------------------------------------------------------- arch table
# (arch names, arch checks, arguments, freezing, with_cp and registries: test_contract.py)
@pytest.mark.parametrize('arch', ['s', 'm', 'l'])
def test_native_strides(arch):
    assert Sequencer2D(arch=arch).native_strides == [7, 14, 14, 14]


TINY = dict(depths=[1, 1, 1, 1], patch_sizes=[7, 2, 1, 1], embed_dims=[16, 24, 24, 32], hidden_sizes=[4, 6, 6, 8],
            mlp_ratios=[2, 2, 2, 2])


@pytest.mark.parametrize('pyramid', ['fpn', 'Native', None, 'learned'])
def test_bad_pyramid(pyramid):
    with pytest.raises(ValueError, match=r"Sequencer2D: pyramid must be one of \('native', 'resample'\), got "):
        Sequencer2D(arch=TINY, pyramid=pyramid)


def test_pyramid_needs_four_stages():
    three = dict(TINY, depths=[1, 1, 1], patch_sizes=[7, 2, 1], embed_dims=[16, 24, 24], hidden_sizes=[4, 6, 6],
                 mlp_ratios=[2, 2, 2])
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


# ---------------------------------------------------------------------------------------------- reference outputs
@pytest.fixture(scope='module', params=['s', 'm', 'l'])
def native_model(request, reference_weights):
    return request.param, _reference_model(reference_weights, request.param, pyramid='native')


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


def test_reference_negative_control(reference_weights):
    """The check catches LayerNorm eps 1e-5 instead of 1e-6 (a slip the README lists)."""
    model = _reference_model(reference_weights, 's', pyramid='native')
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * sum(DEPTHS['s']) + 1 and all(m.eps == 1e-6 for m in norms)
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
def test_native_sizes(reference_weights):
    model = _reference_model(reference_weights, 's', pyramid='native')
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 97, 131))
    h0, w0 = 97 // 7, 131 // 7
    assert (h0, w0) == (13, 18)
    expected = [(2, 192, h0, w0)] + [(2, 384, h0 // 2, w0 // 2)] * 3
    assert [tuple(o.shape) for o in outs] == expected


def test_native_minimum_size():
    model = Sequencer2D(arch=dict(TINY), pyramid='native').eval()
    with pytest.raises(ValueError, match=r"Sequencer2D needs inputs of at least 14x14 pixels \(pyramid='native' "
                       r"floors the input to the stride-14 grid of its last stage; pyramid='resample' pads instead\); "
                       r'got \(13, 64\)'):
        model(torch.randn(1, 3, 13, 64))
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 14, 14))
    assert [tuple(o.shape[2:]) for o in outs] == [(2, 2), (1, 1), (1, 1), (1, 1)]


def _pyramid_shapes(batch, height, width, indices=(0, 1, 2, 3)):
    return [(batch, CHANNELS[i], math.ceil(height / PYRAMID_STRIDES[i]), math.ceil(width / PYRAMID_STRIDES[i]))
            for i in indices]


@pytest.mark.parametrize('size', [(97, 131), (224, 224), pytest.param((800, 1344), marks=pytest.mark.slow)])
def test_pyramid_sizes(size):
    model = Sequencer2D(arch='s').eval()
    assert model.out_channels == CHANNELS
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert [tuple(o.shape) for o in outs] == _pyramid_shapes(1, *size)
    assert all(torch.isfinite(o).all() for o in outs)


def test_pyramid_out_indices():
    model = Sequencer2D(arch='s', out_indices=(1, 3)).eval()
    assert model.out_channels == [384, 384]
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 61, 45))
    assert [tuple(o.shape) for o in outs] == _pyramid_shapes(2, 61, 45, (1, 3))


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


def test_resample_geometry(reference_weights):
    """At 224x224 no padding is needed: level i is the native stage output (normalised for the last stage)
    resampled from stride 7/14/14/14 to 4/8/16/32 with exact geometry (cell centres at (k + 0.5) * stride)."""
    native = _reference_model(reference_weights, 's', pyramid='native')
    resample = _reference_model(reference_weights, 's', pyramid='resample')
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
# (frozen_stages and with_cp for both backbones: test_contract.py)
def test_drop_path_rule():
    rate = 0.1
    model = Sequencer2D(arch='s', drop_path_rate=rate)
    depths = DEPTHS['s']
    total = sum(depths)
    for i, depth in enumerate(depths):
        for j in range(depth):
            block = model.blocks[i][j]
            expected = rate * (j + sum(depths[:i])) / (total - 1)
            if i == 0 and j == 0:
                assert isinstance(block.drop_path, nn.Identity)
            else:
                assert block.drop_path.drop_prob == pytest.approx(expected)
    assert model.blocks[3][depths[3] - 1].drop_path.drop_prob == pytest.approx(rate)


def test_no_norm_eval_argument():
    """Sequencer2D has no BatchNorm, so a norm_eval flag would be accepted and do nothing: it is refused."""
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in Sequencer2D(arch='s').modules())
    with pytest.raises(TypeError, match='norm_eval'):
        Sequencer2D(arch='s', norm_eval=True)
