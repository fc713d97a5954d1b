"""Tests of the DualViT backbone against the official key lists and reference outputs in tests/data."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

import mmdualvit  # noqa: F401  (registers the models)
from mmdualvit.models import DualViT
from tests.utils import (assert_matches, load_reference_weights, matches, official_keys, reference_features,
                         reference_input, stored_inputs)

EMBED_DIMS = {'s': [64, 128, 320, 448], 'b': [64, 128, 320, 512], 'l': [96, 192, 384, 512]}
DEPTHS = {'s': [3, 4, 6, 3], 'b': [3, 4, 15, 3], 'l': [3, 6, 21, 3]}


def _name(arch):
    return f'dualvit_{arch}'


def _is_classifier_only(key, arch):
    """The 22 keys of the official ImageNet checkpoint that the dense backbone does not use."""
    last = DEPTHS[arch][3] - 1
    return key.startswith(('post_network.', 'head.', 'aux_head.', f'block4.{last}.mlp.fc_proxy.'))


def _dense_spec(arch):
    return {k: v for k, v in official_keys(_name(arch)).items() if not _is_classifier_only(k, arch)}


def _shapes(state_dict):
    return {k: list(v.shape) for k, v in state_dict.items()}


def _stage_sizes(size):
    """Spatial sizes of the 4 outputs: conv7x7/2 p3, conv3x3/2 p1, then one conv3x3/2 p1 per later stage."""
    sizes = [(size - 1) // 2 + 1]
    for _ in range(4):
        sizes.append((sizes[-1] - 1) // 2 + 1)
    return sizes[1:]


def _reference_model(reference_weights, arch='s', **kwargs):
    return load_reference_weights(DualViT(arch=arch, **kwargs), reference_weights(_name(arch))).eval()


# ---------------------------------------------------------------------------------------------- arch table
# (arch names, arch checks, arguments, freezing, with_cp and registries: test_contract.py)
@pytest.mark.parametrize('arch', ['s', 'b', 'l'])
def test_arch_layers(arch):
    model = DualViT(arch=arch)
    for i in range(4):
        assert getattr(model, f'norm{i + 1}').normalized_shape == (EMBED_DIMS[arch][i], )
        assert getattr(model, f'norm{i + 1}').eps == 1e-6
    assert model.q.shape == (64, EMBED_DIMS[arch][0])


TINY = dict(stem_hidden_dim=8, embed_dims=[16, 32, 32, 48], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 3],
            mlp_ratios=[2, 2, 2, 2])


@pytest.mark.parametrize('out_type', ['cls', None, 'Raw'])
def test_bad_out_type(out_type):
    with pytest.raises(ValueError, match=r"DualViT: out_type must be 'featmap' or 'raw', got "):
        DualViT(arch=TINY, out_type=out_type)


# ---------------------------------------------------------------------------------------------- keys and sizes
@pytest.mark.parametrize('arch', ['s', 'b', 'l'])
def test_state_dict_matches_official_keys(arch):
    spec = official_keys(_name(arch))
    dense = _dense_spec(arch)
    assert len(spec) - len(dense) == 22
    sd = DualViT(arch=arch).state_dict()
    assert set(sd) == set(dense)
    assert _shapes(sd) == {k: shape for k, (shape, _) in dense.items()}
    for key, (_, dtype) in dense.items():
        assert str(sd[key].dtype) == f'torch.{dtype}', key


@pytest.mark.parametrize('arch, millions', [('s', 21.74), ('b', 38.45), ('l', None)])
def test_parameter_count(arch, millions):
    model = DualViT(arch=arch, out_type='featmap')
    count = sum(p.numel() for p in model.parameters())
    buffers = ('running_mean', 'running_var', 'num_batches_tracked')
    expected = sum(math.prod(shape) for k, (shape, _) in _dense_spec(arch).items() if not k.endswith(buffers))
    assert count == expected
    if millions is not None:
        assert round(count / 1e6, 2) == millions


# ---------------------------------------------------------------------------------------------- reference outputs
REFERENCE_CASES = [(arch, name) for arch in 'sbl' for name in stored_inputs(_name(arch))]


@pytest.fixture(scope='module', params=['s', 'b', 'l'])
def reference_model(request, reference_weights):
    return request.param, _reference_model(reference_weights, request.param)


def test_reference_cases_cover_all_stored_inputs():
    assert REFERENCE_CASES == [('s', 'in160x256'), ('s', 'in224x224'), ('b', 'in160x256'), ('l', 'in160x256')]


def test_reference_outputs(reference_model):
    arch, model = reference_model
    ref = reference_features(_name(arch))
    for name in stored_inputs(_name(arch)):
        with torch.no_grad():
            outs = model(reference_input(name))
        assert len(outs) == 4
        for i, out in enumerate(outs):
            assert_matches(out, ref[f'{name}_out{i}'], f'{arch} {name} out{i}')


def test_reference_negative_control(reference_weights):
    """The check catches a block/stage LayerNorm eps of 1e-5 instead of 1e-6 (a slip the README lists)."""
    model = _reference_model(reference_weights, 's')
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and module.eps == 1e-6:
            module.eps = 1e-5
            changed += 1
    assert changed == 2 * sum(DEPTHS['s']) + 4 + 3
    ref = reference_features('dualvit_s')
    with torch.no_grad():
        outs = model(reference_input('in160x256'))
    assert not any(matches(out, ref[f'in160x256_out{i}']) for i, out in enumerate(outs))


def test_unfused_attention_matches_reference(reference_weights):
    fused = _reference_model(reference_weights, 's')
    unfused = _reference_model(reference_weights, 's', fused_attention=False)
    assert not unfused.fused_attention
    assert all(not m.fused for m in unfused.modules() if hasattr(m, 'fused'))
    ref = reference_features('dualvit_s')
    x = reference_input('in160x256')
    with torch.no_grad():
        outs_fused, outs_unfused = fused(x), unfused(x)
    for i, (a, b) in enumerate(zip(outs_fused, outs_unfused)):
        assert_matches(b, ref[f'in160x256_out{i}'], f'unfused out{i}')
        assert_matches(b, a.numpy(), f'unfused vs fused out{i}')


def test_explicit_attention_never_calls_sdpa(monkeypatch):
    """fused_attention=False materialises every attention, the initial semantic cross-attention included: the
    model runs with scaled_dot_product_attention made to raise, and the fused model does not (the control)."""
    def refuse(*args, **kwargs):
        raise AssertionError('scaled_dot_product_attention called')

    monkeypatch.setattr(F, 'scaled_dot_product_attention', refuse)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outs = DualViT(arch=TINY, fused_attention=False).eval()(x)
        assert len(outs) == 4 and all(torch.isfinite(o).all() for o in outs)
        with pytest.raises(AssertionError, match='scaled_dot_product_attention called'):
            DualViT(arch=TINY).eval()(x)


# Measured 2026-12-01 (reference weights, 4 input sizes x 3 seeds, batch 2): fused vs explicit initial semantic
# tokens differ by at most 1.4e-6 and on average 1.2e-7, in units of the tokens' std (float32 rounding: a few ulp).
SEMANTIC_MAX_BOUND, SEMANTIC_MEAN_BOUND = 3e-6, 3e-7


@pytest.mark.parametrize('size', [(160, 256), (55, 111)])
def test_initial_semantics_fused_and_explicit_agree(size, reference_weights):
    model = _reference_model(reference_weights, 's')
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, hw = model.patch_embed1(x)
        fused = model._initial_semantics(tokens, hw)
        model.fused_attention = False
        explicit = model._initial_semantics(tokens, hw)
    diff = (explicit - fused).abs() / fused.std()
    assert diff.max() <= SEMANTIC_MAX_BOUND and diff.mean() <= SEMANTIC_MEAN_BOUND, (diff.max(), diff.mean())


# ---------------------------------------------------------------------------------------------- out_type='raw'
def test_raw_output_type(reference_weights):
    model = DualViT(arch='s', out_type='raw')
    assert not hasattr(model, 'norm4')
    assert model.block4[-1].mlp.fc_proxy is not None
    assert all(block.mlp.fc_proxy is not None for block in list(model.block3) + list(model.block4))
    spec = official_keys('dualvit_s')
    expected = {
        k: shape
        for k, (shape, _) in spec.items() if not k.startswith(('post_network.', 'head.', 'aux_head.', 'norm4.'))
    }
    assert _shapes(model.state_dict()) == expected

    load_reference_weights(model, reference_weights('dualvit_s')).eval()
    ref = reference_features('dualvit_s')
    for name in stored_inputs('dualvit_s'):
        x = reference_input(name)
        with torch.no_grad():
            outs = model(x)
        h4, w4 = (_stage_sizes(s)[0] for s in x.shape[2:])
        h32, w32 = (_stage_sizes(s)[3] for s in x.shape[2:])
        num_semantic = (h4 // 7) * (w4 // 7)
        pixels, semantics = outs[3]
        assert pixels.shape == (1, h32 * w32, 448) and semantics.shape == (1, num_semantic, 448)
        for i in range(3):
            assert_matches(outs[i], ref[f'{name}_out{i}'], f'raw {name} out{i}')
        # The pixel tokens of the raw output, normalised with the checkpoint's norm4, are the dense out3.
        sd = reference_weights('dualvit_s')
        pixels = F.layer_norm(pixels, (448, ), sd['norm4.weight'], sd['norm4.bias'], eps=1e-6)
        assert_matches(pixels.transpose(1, 2).reshape(1, 448, h32, w32), ref[f'{name}_out3'], f'raw {name} out3')


def test_raw_output_batch_and_indices():
    model = DualViT(arch=dict(TINY), out_type='raw', out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 96))
    # stride-4 map 16x24 -> 2x3 semantic tokens; stride-32 map 2x3
    assert tuple(outs[0].shape) == (2, 32, 8, 12)
    assert [tuple(t.shape) for t in outs[1]] == [(2, 6, 48), (2, 6, 48)]


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('size', [(29, 57), (113, 137), (224, 224)])
def test_output_shapes_and_strides(size, train):
    model = DualViT(arch='s', drop_path_rate=0.1).train(train)
    with torch.set_grad_enabled(train):
        outs = model(torch.randn(2, 3, *size))
    hs, ws = _stage_sizes(size[0]), _stage_sizes(size[1])
    assert [tuple(o.shape) for o in outs] == [(2, c, h, w) for c, h, w in zip(EMBED_DIMS['s'], hs, ws)]
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('size', [(29, 57), (113, 137)])
@pytest.mark.parametrize('out_indices', [(0, ), (1, 3), (2, ), (3, ), (0, 1, 2), (-1, -3)])
def test_out_indices_subsets(out_indices, size, reference_weights):
    full = _reference_model(reference_weights, 's')
    subset = DualViT(arch='s', out_indices=out_indices).eval()
    subset.load_state_dict(full.state_dict(), strict=True)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs_full, outs = full(x), subset(x)
    indices = sorted(i % 4 for i in out_indices)
    assert subset.out_channels == [EMBED_DIMS['s'][i] for i in indices]
    assert len(outs) == len(indices)
    for i, out in zip(indices, outs):
        assert torch.equal(out, outs_full[i])


@pytest.mark.slow
def test_output_shapes_detection_size():
    model = DualViT(arch='s').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 800, 1344))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 200, 336), (1, 128, 100, 168), (1, 320, 50, 84),
                                              (1, 448, 25, 42)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_minimum_input_size():
    model = DualViT(arch='s').eval()
    for size in [(27, 64), (64, 27), (16, 16)]:
        with pytest.raises(ValueError, match=r'DualViT needs inputs of at least 28x28 pixels \(its semantic tokens '
                           r'pool the stride-4 map in 7x7 windows\); got \(\d+, \d+\). Resize or pad the input.'):
            model(torch.randn(1, 3, *size))
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 28, 28))
    assert [tuple(o.shape[2:]) for o in outs] == [(7, 7), (4, 4), (2, 2), (1, 1)]


# ---------------------------------------------------------------------------------------------- training options
# (frozen_stages and with_cp for both backbones: test_contract.py)
def test_default_stem_bn_affine_is_frozen():
    model = DualViT(arch='s').train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) == 3
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    assert all(bn.training for bn in bns)  # statistics still update unless norm_eval


@pytest.mark.parametrize('norm_eval', [False, True])
def test_norm_eval(norm_eval):
    model = DualViT(arch='s', norm_eval=norm_eval).train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) == 3
    assert all(bn.training != norm_eval for bn in bns)
    assert model.block1.training and model.patch_embed1.proj.training
    if norm_eval:
        stats = bns[0].running_mean.clone()
        model(torch.randn(2, 3, 64, 64))
        assert torch.equal(bns[0].running_mean, stats)


def test_drop_path_rates():
    model = DualViT(arch='s', drop_path_rate=0.2)
    rates = torch.linspace(0, 0.2, sum(DEPTHS['s'])).tolist()
    blocks = [b for i in range(4) for b in getattr(model, f'block{i + 1}')]
    assert len(blocks) == len(rates)
    for block, rate in zip(blocks, rates):
        if rate == 0:
            assert isinstance(block.drop_path, nn.Identity)
        else:
            assert block.drop_path.drop_prob == pytest.approx(rate)


# ---------------------------------------------------------------------------------------------- checkpoints
def _square_query(q, side):
    grid = q.reshape(8, 8, -1).permute(2, 0, 1)[None]
    return F.interpolate(grid, size=(side, side), mode='bicubic', align_corners=False)[0].flatten(1).t()


@pytest.mark.parametrize('loader', ['torch', 'mmengine'])
def test_semantic_query_resize_on_load(loader, tmp_path, reference_weights):
    sd = {k: v for k, v in reference_weights('dualvit_s').items() if not _is_classifier_only(k, 's')}
    q12 = _square_query(sd['q'], 12).contiguous()
    assert q12.shape == (144, 64)
    sd['q'] = q12
    model = DualViT(arch='s').eval()
    if loader == 'torch':
        model.load_state_dict(sd, strict=True)
        assert sd['q'].shape == (144, 64)  # the caller's dict is left alone
    else:
        from mmengine.runner import load_checkpoint, save_checkpoint
        path = str(tmp_path / 'q12.pth')
        save_checkpoint({'state_dict': sd}, path)
        load_checkpoint(model, path, map_location='cpu', strict=True)
    assert model.q.shape == (64, 64)
    grid = q12.t().reshape(1, 64, 12, 12)
    expected = F.interpolate(grid, size=(8, 8), mode='bicubic', align_corners=False)[0].flatten(1).t()
    torch.testing.assert_close(model.q.detach(), expected, rtol=0, atol=1e-6)
    # 8 -> 12 -> 8 bicubic is close to (not exactly) the original query
    assert (model.q.detach() - reference_weights('dualvit_s')['q']).abs().max() < 0.5
    with torch.no_grad():
        outs = model(reference_input('in160x256'))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 40, 64), (1, 128, 20, 32), (1, 320, 10, 16), (1, 448, 5, 8)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_semantic_query_same_grid_loads_unchanged(reference_weights):
    model = _reference_model(reference_weights, 's')
    torch.testing.assert_close(model.q.detach(), reference_weights('dualvit_s')['q'], rtol=0, atol=0)


def test_semantic_query_non_square_rejected(reference_weights):
    sd = {k: v for k, v in reference_weights('dualvit_s').items() if not _is_classifier_only(k, 's')}
    sd['q'] = torch.zeros(50, 64)
    with pytest.raises(RuntimeError, match='q'):
        DualViT(arch='s').load_state_dict(sd, strict=True)


def test_mmengine_checkpoint_round_trip(tmp_path, reference_weights):
    from mmengine.runner import load_checkpoint, save_checkpoint
    model = _reference_model(reference_weights, 's')
    path = str(tmp_path / 'dualvit_s.pth')
    save_checkpoint({'state_dict': model.state_dict()}, path)
    model2 = DualViT(arch='s').eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        before = model2(x)
        expected = model(x)
    assert not torch.allclose(before[0], expected[0])
    load_checkpoint(model2, path, map_location='cpu', strict=True)
    with torch.no_grad():
        after = model2(x)
    for a, b in zip(after, expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize('size,tokens', [((55, 55), 4), ((111, 111), 16), ((224, 224), 64), ((55, 111), 8),
                                         ((57, 83), 6), ((25, 25), 1)])
def test_semantic_token_count_rule(size, tokens):
    """M = floor(ceil(H/4)/7) * floor(ceil(W/4)/7): the stem rounds up, the 7x7 pool rounds down."""
    model = DualViT(arch=TINY).eval()
    model.min_input_size = 25  # reach the smallest size with one pooling window (the guard asks for 28)
    seen = []
    model.proxy_embed2.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, *size))
    assert seen == [tokens] == [(math.ceil(size[0] / 4) // 7) * (math.ceil(size[1] / 4) // 7)]


def test_test_tile_size_gives_the_official_tiled_features():
    """test_tile_size (the official segmentation backbone's test time): in eval mode an input wider than the tile
    takes each stage's features from tile crops, placed one after the other, the last flush with the far edge (it
    overlaps its neighbour and wins); training and inputs within the tile use the whole image."""
    torch.manual_seed(0)
    model = DualViT(arch=TINY, test_tile_size=64).eval()
    x = torch.randn(1, 3, 64, 160)  # column crops at 0, 64 and 96 (the last ends at 160)
    with torch.no_grad():
        tiled = model(x)
        crops = [model._forward(x[..., :, left:left + 64]) for left in (0, 64, 96)]
        whole = model._forward(x)
    for level, (out, stride) in enumerate(zip(tiled, (4, 8, 16, 32))):
        w = 64 // stride
        assert out.shape == whole[level].shape
        torch.testing.assert_close(out[..., :w], crops[0][level], rtol=0, atol=0)
        full = out.shape[-1]  # 160 / stride: the middle crop shows up to where the last one starts
        torch.testing.assert_close(out[..., w:full - w], crops[1][level][..., :full - 2 * w], rtol=0, atol=0)
        torch.testing.assert_close(out[..., -w:], crops[2][level], rtol=0, atol=0)
        assert not torch.allclose(out, whole[level])  # the tiles' semantic tokens see only their crop
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x[..., :64]), model._forward(x[..., :64])))
        model.train()
        torch.manual_seed(1)
        trained = model(x)
    assert all(a.shape == b.shape for a, b in zip(trained, whole))
    with pytest.raises(ValueError, match='test_tile_size must be None or a multiple of 32'):
        DualViT(arch=TINY, test_tile_size=100)
