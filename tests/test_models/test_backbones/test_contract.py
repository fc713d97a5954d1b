"""The contract both backbones keep: named archs and checked arch dicts, argument and input checks, drop-path range,
gradient checkpointing, freezing (mmdet's ``frozen_stages`` convention) and building from every library registry.

Architecture-specific behaviour (reference tensors, key lists, output geometry) is tested in test_dual_vit.py and
test_sequencer2d.py.
"""
import re
from dataclasses import dataclass, field
from typing import Callable, List

import pytest
import torch
import torch.utils.checkpoint as cp

from mmdualvit.models import DualViT, Sequencer2D
from tests.utils import grads_and_outputs, load_reference_weights


@dataclass
class Spec:
    """What the contract tests need to know about one backbone (written from the official code, not the model)."""
    cls: type
    ref_prefix: str  # reference weights: f'{ref_prefix}_{arch}'
    archs: dict  # arch name -> expected settings
    aliases: dict  # alias -> arch name
    stage_lengths: Callable  # model -> number of entries of each stage's container
    tiny: dict  # a small custom arch
    tiny_kwargs: dict
    tiny_input: tuple
    tiny_shapes: list
    kwargs: dict = field(default_factory=dict)  # for the 's' model of the contract tests
    bad_arch: list = field(default_factory=list)  # (arch key, value, message regex) specific to this backbone

    @property
    def name(self):
        return self.cls.__name__

    def parts(self, depths) -> List[List[str]]:
        """Parameter-name prefixes of the stem and of stages 1-4, as ``frozen_stages`` freezes them."""
        if self.cls is DualViT:
            return [['patch_embed1'], ['q', 'q_embed', 'kv', 'se', 'proxy_ln', 'block1', 'norm1', 'norm_proxy1']] + [
                [f'patch_embed{i}', f'proxy_embed{i}', f'block{i}', f'norm{i}', f'norm_proxy{i}'] for i in (2, 3, 4)]
        # Sequencer2D, official layout: the downsampling conv starting stage i is the last entry of blocks[i-1]
        parts = [['stem']]
        for i, depth in enumerate(depths):
            parts.append([f'blocks.{i}.{j}' for j in range(depth)] + ([f'blocks.{i - 1}.{depths[i - 1]}'] if i else []))
        parts[-1].append('norm')
        return parts


DUALVIT_HEADS_ERROR = r"arch\['num_heads'\]\[1\] = 3 does not divide arch\['embed_dims'\]\[1\] = 32; use a head"
SPECS = [
    Spec(DualViT, 'dualvit',
         archs={
             's': dict(stem_hidden_dim=32, embed_dims=[64, 128, 320, 448], depths=[3, 4, 6, 3],
                       num_heads=[2, 4, 10, 14], mlp_ratios=[8, 8, 4, 3]),
             'b': dict(stem_hidden_dim=64, embed_dims=[64, 128, 320, 512], depths=[3, 4, 15, 3],
                       num_heads=[2, 4, 10, 16], mlp_ratios=[8, 8, 4, 3]),
             'l': dict(stem_hidden_dim=64, embed_dims=[96, 192, 384, 512], depths=[3, 6, 21, 3],
                       num_heads=[3, 6, 12, 16], mlp_ratios=[8, 8, 4, 3]),
         },
         aliases={'small': 's', 'base': 'b', 'large': 'l', 'S': 's'},
         stage_lengths=lambda m: [len(getattr(m, f'block{i + 1}')) for i in range(4)],
         tiny=dict(stem_hidden_dim=8, embed_dims=[16, 32, 32, 48], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 3],
                   mlp_ratios=[2, 2, 2, 2]),
         tiny_kwargs={}, tiny_input=(1, 3, 64, 64),
         tiny_shapes=[(1, 16, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4), (1, 48, 2, 2)],
         kwargs=dict(stem_norm_cfg=dict(type='BN', requires_grad=True)),  # so requires_grad shows freezing only
         bad_arch=[
             ('num_heads', [1, 0, 2, 3], r"arch\['num_heads'\]\[1\] must be a positive int, got 0"),
             ('num_heads', [1, 3, 2, 3], DUALVIT_HEADS_ERROR),
             ('stem_hidden_dim', 0, r"arch\['stem_hidden_dim'\] must be a positive int, got 0"),
             ('stem_hidden_dim', [8], r"arch\['stem_hidden_dim'\] must be a positive int, got \[8\]"),
             ('mlp_ratios', [2, 2, 1, 2], r"arch\['mlp_ratios'\]\[2\] = 1 gives stage 3's odd blocks .* "
              r'hidden width of 0; use a ratio above 1 \+ 1/32'),
         ]),
    Spec(Sequencer2D, 'sequencer2d',
         archs={
             name: dict(depths=depths, patch_sizes=[7, 2, 1, 1], embed_dims=[192, 384, 384, 384],
                        hidden_sizes=[48, 96, 96, 96], mlp_ratios=[3, 3, 3, 3])
             for name, depths in (('s', [4, 3, 8, 3]), ('m', [4, 3, 14, 3]), ('l', [8, 8, 16, 4]))
         },
         aliases={'small': 's', 'medium': 'm', 'large': 'l', 'M': 'm'},
         stage_lengths=lambda m: [len(stage) for stage in m.blocks],
         tiny=dict(depths=[1, 1, 1, 1], patch_sizes=[7, 2, 1, 1], embed_dims=[16, 24, 24, 32],
                   hidden_sizes=[4, 6, 6, 8], mlp_ratios=[2, 2, 2, 2]),
         tiny_kwargs=dict(pyramid='native'), tiny_input=(1, 3, 56, 70),
         tiny_shapes=[(1, 16, 8, 10), (1, 24, 4, 5), (1, 24, 4, 5), (1, 32, 4, 5)],
         bad_arch=[
             ('hidden_sizes', [4, 6, 0, 8], r"arch\['hidden_sizes'\]\[2\] must be a positive int, got 0"),
             ('patch_sizes', [7, -2, 1, 1], r"arch\['patch_sizes'\]\[1\] must be a positive int, got -2"),
         ]),
]
IDS = [spec.name for spec in SPECS]


@pytest.fixture(params=SPECS, ids=IDS)
def spec(request):
    return request.param


def _stage_lengths(spec, depths):
    """Sequencer2D keeps the next stage's downsampling conv as the last entry of a stage (official layout)."""
    if spec.cls is Sequencer2D:
        return [d + 1 for d in depths[:-1]] + depths[-1:]
    return list(depths)


# ---------------------------------------------------------------------------------------------- arch table
@pytest.mark.parametrize('spec,arch', [(s, a) for s in SPECS for a in [*s.archs, *s.aliases]],
                         ids=[f'{s.name}-{a}' for s in SPECS for a in [*s.archs, *s.aliases]])
def test_arch_names(spec, arch):
    expected = spec.archs[spec.aliases.get(arch, arch)]
    model = spec.cls(arch=arch)
    assert model.arch_settings == expected
    assert model.depths == expected['depths'] and model.embed_dims == expected['embed_dims']
    assert model.num_stages == 4 and model.out_indices == (0, 1, 2, 3)
    assert model.out_channels == expected['embed_dims']
    assert spec.stage_lengths(model) == _stage_lengths(spec, expected['depths'])


def test_arch_settings_are_a_copy(spec):
    """Editing a model's arch_settings in place changes neither the zoo nor the dict it was built from."""
    spec.cls(arch='s').arch_settings['depths'].append(9)
    assert spec.cls.arch_zoo['s'] == spec.archs['s']
    arch = {k: list(v) if isinstance(v, list) else v for k, v in spec.tiny.items()}
    spec.cls(arch=arch).arch_settings['embed_dims'][0] = 99
    assert arch == spec.tiny


def test_unknown_arch_name(spec):
    with pytest.raises(ValueError, match=rf"{spec.name}: unknown arch 'tiny'; choose one of 's', .*or pass a dict"):
        spec.cls(arch='tiny')


def test_custom_arch_dict(spec):
    model = spec.cls(arch=dict(spec.tiny), **spec.tiny_kwargs).eval()
    assert model.out_channels == spec.tiny['embed_dims']
    with torch.no_grad():
        outs = model(torch.randn(*spec.tiny_input))
    assert [tuple(o.shape) for o in outs] == spec.tiny_shapes


def test_custom_arch_dict_keys(spec):
    with pytest.raises(ValueError, match=r"needs exactly the keys .*; missing \['embed_dims'\], unknown \[\]"):
        spec.cls(arch={k: v for k, v in spec.tiny.items() if k != 'embed_dims'})
    with pytest.raises(ValueError, match=r"missing \[\], unknown \['qkv_bias'\]"):
        spec.cls(arch=dict(spec.tiny, qkv_bias=True))
    with pytest.raises(TypeError, match='arch must be a str or a dict, got list'):
        spec.cls(arch=['s'])


# Values every backbone refuses, with the message that names the entry (issue 19: checked when the model is built)
GENERIC_BAD_ARCH = [
    ('depths', [1, -1, 1, 1], r"arch\['depths'\]\[1\] must be a positive int, got -1"),
    ('depths', [1, 0, 1, 1], r"arch\['depths'\]\[1\] must be a positive int, got 0"),
    ('depths', [1, 1.5, 1, 1], r"arch\['depths'\]\[1\] must be a positive int, got 1.5"),
    ('depths', [True, 1, 1, 1], r"arch\['depths'\]\[0\] must be a positive int, got True"),
    ('depths', [1, 1, 1], r"the per-stage arch lists differ in length \(.*'depths': 3.*\); give every one"),
    ('depths', 4, r"arch\['depths'\] must be a non-empty list with one entry per stage, got 4"),
    ('depths', [], r"arch\['depths'\] must be a non-empty list with one entry per stage, got \[\]"),
    ('embed_dims', [16, 0, 32, 48], r"arch\['embed_dims'\]\[1\] must be a positive int, got 0"),
    ('mlp_ratios', [2, 0, 2, 2], r"arch\['mlp_ratios'\]\[1\] must be a positive finite number, got 0"),
    ('mlp_ratios', [2, -1, 2, 2], r"arch\['mlp_ratios'\]\[1\] must be a positive finite number, got -1"),
    ('mlp_ratios', [2, float('nan'), 2, 2], r"arch\['mlp_ratios'\]\[1\] must be a positive finite number, got nan"),
    ('mlp_ratios', [2, float('inf'), 2, 2], r"arch\['mlp_ratios'\]\[1\] must be a positive finite number, got inf"),
    ('mlp_ratios', [2, '2', 2, 2], r"arch\['mlp_ratios'\]\[1\] must be a positive finite number, got '2'"),
    ('mlp_ratios', [0.01, 2, 2, 2], r"arch\['mlp_ratios'\]\[0\] = 0.01 gives stage 1 \(width 16\) a hidden width of "
     r'0; use a ratio of at least 1/16'),
]


@pytest.mark.parametrize('spec,key,value,message',
                         [(s, *case) for s in SPECS for case in GENERIC_BAD_ARCH + s.bad_arch],
                         ids=[f'{s.name}-{case[0]}-{i}' for s in SPECS for i, case in
                              enumerate(GENERIC_BAD_ARCH + s.bad_arch)])
def test_bad_arch_values_are_refused_when_built(spec, key, value, message):
    with pytest.raises(ValueError, match=rf'^{spec.name}: ' + message):
        spec.cls(arch=dict(spec.tiny, **{key: value}))


def test_tuples_are_accepted_in_arch_dicts(spec):
    model = spec.cls(arch={k: tuple(v) if isinstance(v, list) else v for k, v in spec.tiny.items()})
    assert model.depths == spec.tiny['depths']


# ---------------------------------------------------------------------------------------------- arguments
BAD_ARGUMENTS = [
    (dict(frozen_stages=5), r'frozen_stages must be an int in \[-1, 4\] \(-1 freezes nothing, 0 the stem, k the stem '
     r'and stages 1..k\), got 5'),
    (dict(frozen_stages=-2), r'frozen_stages must be an int in \[-1, 4\] .*got -2'),
    (dict(frozen_stages=1.0), r'frozen_stages must be an int in \[-1, 4\] .*got 1.0'),
    (dict(frozen_stages=True), r'frozen_stages must be an int in \[-1, 4\] .*got True'),
    (dict(out_indices=()), r'out_indices must name at least one stage, got \(\); pass stage indices in \[-4, 3\], '
     r'e.g. \(0, 1, 2, 3\)'),
    (dict(out_indices=[]), r'out_indices must name at least one stage, got \[\]'),
    (dict(out_indices='0'), r"out_indices must name at least one stage, got '0'"),
    (dict(out_indices=(4, )), r'out_indices entry 4 is not a stage of this 4-stage model; pass stage indices in '
     r'\[-4, 3\]'),
    (dict(out_indices=(-5, )), r'out_indices entry -5 is not a stage'),
    (dict(out_indices=(1.0, )), r'out_indices entry 1.0 is not a stage'),
    (dict(out_indices=(0, 0)), r'out_indices \(0, 0\) repeats a stage; name each stage once'),
    (dict(out_indices=(3, -1)), r'out_indices \(3, -1\) repeats a stage'),
    (dict(in_channels=0), r'in_channels must be a positive int, got 0'),
]


@pytest.mark.parametrize('kwargs,message', BAD_ARGUMENTS, ids=[str(k) for k, _ in BAD_ARGUMENTS])
def test_bad_arguments(spec, kwargs, message):
    with pytest.raises(ValueError, match=rf'^{spec.name}: {message}'):
        spec.cls(arch=spec.tiny, **kwargs)


def test_out_indices_normalised(spec):
    assert spec.cls(arch=spec.tiny, out_indices=(-1, 0)).out_indices == (0, 3)
    assert spec.cls(arch=spec.tiny, out_indices=2).out_indices == (2, )
    assert spec.cls(arch=spec.tiny, out_indices=[3, 1]).out_channels == [spec.tiny['embed_dims'][i] for i in (1, 3)]


@pytest.mark.parametrize('rate', [1.0, 1.5, -0.1, float('nan'), float('inf'), '0.1', None])
def test_drop_path_rate_outside_unit_interval_is_an_error(spec, rate):
    with pytest.raises(ValueError, match=rf'{spec.name}: drop_path_rate must be in \[0, 1\), got '):
        spec.cls(arch=spec.tiny, drop_path_rate=rate)


def test_misspelled_init_cfg_type_fails_at_construction(spec):
    with pytest.raises(ValueError, match=rf"{spec.name}: unknown init_cfg type 'pretrained'"):
        spec.cls(arch=spec.tiny, init_cfg=dict(type='pretrained', checkpoint='x.pth'))


# ---------------------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize('dtype', [torch.uint8, torch.int64, torch.bool])
def test_non_float_input_is_refused(spec, dtype):
    model = spec.cls(arch=spec.tiny, **spec.tiny_kwargs).eval()
    with pytest.raises(TypeError, match=rf'{spec.name} expects a floating-point image batch, got {dtype}\. Convert '
                       r'and normalise it first \(x.float\(\)'):
        model(torch.zeros(spec.tiny_input, dtype=dtype))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtype_other_than_the_weights_is_refused(spec, dtype):
    model = spec.cls(arch=spec.tiny, **spec.tiny_kwargs).eval()
    with pytest.raises(TypeError, match=rf'{spec.name}: the input is {dtype} but the weights are torch.float32; cast '
                       rf'the input \(x.to\(torch.float32\)\), cast the model \(model.to\({dtype}\)\), or run under '
                       r'torch.autocast'):
        model(torch.zeros(spec.tiny_input, dtype=dtype))


def _cpu_has_half_convolutions() -> bool:
    """torch < 2.2 has no float16 convolution kernel on CPU ("slow_conv2d_cpu" not implemented for 'Half')."""
    try:
        torch.nn.functional.conv2d(torch.zeros(1, 1, 2, 2, dtype=torch.half), torch.zeros(1, 1, 1, 1, dtype=torch.half))
    except RuntimeError:
        return False
    return True


def test_defined_reduced_precision_behaviour_on_cpu(spec):
    """fp16 on CPU runs where the dtypes agree (a half model, where torch has CPU fp16 kernels) or autocast decides
    them; float64 under autocast is refused by name."""
    model = spec.cls(arch=spec.tiny, **spec.tiny_kwargs).eval()
    x = torch.randn(spec.tiny_input)
    with torch.no_grad():
        full = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            from_half = model(x.half())
        with pytest.raises(TypeError, match=rf'{spec.name}: a float64 input cannot run under autocast; pass '
                           r'x.float\(\)'), torch.autocast('cpu', dtype=torch.bfloat16):
            model(x.double())
        for a, b in zip(full, from_half):
            assert b.shape == a.shape and torch.isfinite(b).all()
        model.half()
        if not _cpu_has_half_convolutions():  # our input checks let it through; torch itself has no kernel
            with pytest.raises(RuntimeError, match="not implemented for 'Half'"):
                model(x.half())
            return
        half = model(x.half())
    for a, c in zip(full, half):
        assert c.shape == a.shape and c.dtype == torch.float16 and torch.isfinite(c).all()


@pytest.mark.parametrize('shape', [(3, 64, 64), (1, 4, 64, 64), (1, 1, 3, 64, 64)])
def test_input_shape_is_checked(spec, shape):
    model = spec.cls(arch=spec.tiny, **spec.tiny_kwargs).eval()
    with pytest.raises(ValueError, match=rf'{spec.name} expects an image batch of shape \(B, 3, H, W\), got '
                       + re.escape(str(shape))):
        model(torch.zeros(shape))


# ---------------------------------------------------------------------------------------------- with_cp
@pytest.mark.parametrize('spec,kwargs', [(SPECS[0], {}), (SPECS[1], dict(pyramid='resample')),
                                         (SPECS[1], dict(pyramid='native'))],
                         ids=['DualViT', 'Sequencer2D-resample', 'Sequencer2D-native'])
def test_with_cp_equivalence(spec, kwargs, reference_weights, monkeypatch):
    """Gradient checkpointing runs once per block and gives the same outputs and gradients."""
    calls = []
    original = cp.checkpoint
    monkeypatch.setattr(cp, 'checkpoint', lambda *a, **k: calls.append(1) or original(*a, **k))
    kwargs = dict(spec.kwargs, arch='s', **kwargs)
    plain = load_reference_weights(spec.cls(**kwargs), reference_weights(f'{spec.ref_prefix}_s'))
    ckpt = spec.cls(with_cp=True, **kwargs)
    ckpt.load_state_dict(plain.state_dict(), strict=True)
    plain.train(), ckpt.train()
    x = torch.randn(2, 3, 56, 84, generator=torch.Generator().manual_seed(0))
    outs_plain, grads_plain = grads_and_outputs(plain, x)
    assert not calls
    outs_ckpt, grads_ckpt = grads_and_outputs(ckpt, x)
    assert len(calls) == sum(spec.archs['s']['depths'])
    for a, b in zip(outs_plain, outs_ckpt):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    trainable = {n for n, p in plain.named_parameters()}
    if kwargs.get('pyramid') == 'native':  # the final norm is not used by the native outputs
        trainable -= {'norm.weight', 'norm.bias'}
    assert set(grads_plain) == set(grads_ckpt) == trainable
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- freezing
def _in(name, prefixes):
    return any(name == p or name.startswith(p + '.') for p in prefixes)


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 4])
def test_frozen_stages(spec, frozen_stages):
    """-1 freezes nothing, 0 the stem, k the stem and stages 1..k: eval mode, no gradients, unchanged BN statistics,
    and all of it again after every train()."""
    model = spec.cls(arch='s', frozen_stages=frozen_stages, **spec.kwargs)
    parts = spec.parts(model.depths)
    names = [n for n, _ in model.named_parameters()]
    assert all(sum(_in(n, part) for part in parts) == 1 for n in names), 'every parameter in exactly one part'
    frozen = [p for part in parts[:frozen_stages + 1] for p in part]

    model.train()
    for _ in range(2):  # as built, and after another train() (the runner calls it every epoch)
        for name, param in model.named_parameters():
            assert param.requires_grad != _in(name, frozen), name
        for name, module in model.named_modules():
            if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
                assert module.training != _in(name, frozen), name
        model.eval().train()

    buffers = {n: b.clone() for n, b in model.named_buffers()}
    loss = sum(o.float().sum() for o in model(torch.randn(2, 3, 64, 96)))
    assert loss.requires_grad != (frozen_stages == 4)
    if loss.requires_grad:
        loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is None) == _in(name, frozen), name
    for name, before in buffers.items():  # DualViT's stem BN statistics; Sequencer2D has no buffers
        assert torch.equal(model.get_buffer(name), before) == _in(name, frozen), name
    assert bool(buffers) == (spec.cls is DualViT)


# ---------------------------------------------------------------------------------------------- registries
@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_build_from_downstream_registry(spec, scope):
    import importlib

    from mmengine.registry import DefaultScope
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(dict(type=f'mmdualvit.{spec.name}', arch='l', out_indices=(1, 2), frozen_stages=1))
    assert type(model) is spec.cls
    assert model.arch_settings == spec.archs['l'] and model.out_indices == (1, 2) and model.frozen_stages == 1
