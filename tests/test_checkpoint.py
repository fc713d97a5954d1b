"""The one checkpoint path: formats, loud failures with exact messages, converters, safe unpickling."""
import argparse
import json
import os
import re
import sys
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from mmdualvit.checkpoint import CheckpointError, extract_state_dict, load_pretrained, read_checkpoint
from mmdualvit.models import DualViT, Sequencer2D
from tests.utils import REPO, make_state_dict, official_dualvit_file, run_tool

DATA = REPO / 'tests' / 'data'


def official(name):
    return make_state_dict(json.loads((DATA / f'{name}_imagenet_keys.json').read_text()))


def to_timm(sd, layers):
    """Official Sequencer2D names -> timm names (the inverse of the mapping under test, written independently)."""
    out = OrderedDict()
    for key, value in sd.items():
        m = re.match(r'blocks\.(\d+)\.(\d+)\.(.*)', key)
        if m:
            i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            key = (f'stages.{i + 1}.downsample.{rest}' if j == layers[i] else f'stages.{i}.blocks.{j}.{rest}')
        elif key.startswith('head.'):
            key = 'head.fc.' + key[5:]
        out[key] = value
    return out


@pytest.fixture(scope='module')
def dualvit_s_sd():
    return official('dualvit_s')


@pytest.fixture(scope='module')
def seq_s_sd():
    return official('sequencer2d_s')


def outputs(model, size=(64, 96)):
    model.eval()
    with torch.no_grad():
        return model(torch.linspace(-1, 1, 3 * size[0] * size[1]).reshape(1, 3, *size))


# ------------------------------------------------------------------------------------------------ formats
def test_official_dualvit_pth_tar_with_namespace_loads(tmp_path, dualvit_s_sd, caplog):
    path = official_dualvit_file(tmp_path / 'checkpoint-309.pth.tar', {
        'epoch': 309, 'arch': 'dualvit_s', 'state_dict': dualvit_s_sd, 'optimizer': {'state': {}}, 'version': 2,
        'args': argparse.Namespace(model='dualvit_s', lr=1e-3), 'metric': 84.1})
    model = DualViT(arch='s')
    summary = load_pretrained(model, str(path))
    assert summary['loaded'] == len(model.state_dict()) == 540
    assert sorted(summary['unused']) == sorted(k for k in dualvit_s_sd if k.startswith(
        ('post_network.', 'head.', 'aux_head.', 'block4.2.mlp.fc_proxy.')))
    for key, value in model.state_dict().items():
        assert torch.equal(value, dualvit_s_sd[key]), key


@pytest.mark.parametrize('wrap', ['raw', 'state_dict', 'model', 'module_prefix', 'backbone_prefix'])
def test_wrappers_and_prefixes(tmp_path, dualvit_s_sd, wrap):
    sd = dict(dualvit_s_sd)
    if wrap == 'state_dict':
        obj = {'state_dict': sd, 'meta': {'epoch': 1}}
    elif wrap == 'model':
        obj = {'model': sd}
    elif wrap == 'module_prefix':
        obj = {'state_dict': {'module.' + k: v for k, v in sd.items()}}
    elif wrap == 'backbone_prefix':  # a detector checkpoint given as ImageNet weights: its backbone is taken
        obj = {'state_dict': {**{'backbone.' + k: v for k, v in sd.items() if not k.startswith(
            ('head.', 'aux_head.', 'post_network.'))}, 'neck.lateral_convs.0.conv.weight': torch.zeros(1)}}
    else:
        obj = sd
    torch.save(obj, tmp_path / 'w.pth')
    model = DualViT(arch='s')
    load_pretrained(model, str(tmp_path / 'w.pth'))
    assert torch.equal(model.q, dualvit_s_sd['q'])


def test_sequencer_official_and_timm_formats_give_identical_models(tmp_path, seq_s_sd):
    timm_sd = to_timm(seq_s_sd, [4, 3, 8, 3])
    assert 'stages.1.downsample.down.weight' in timm_sd and 'head.fc.weight' in timm_sd
    torch.save(seq_s_sd, tmp_path / 'sequencer2d_s.pth')
    save_file({k: v.contiguous() for k, v in timm_sd.items()}, str(tmp_path / 'model.safetensors'))
    torch.save({'model': timm_sd}, tmp_path / 'timm_wrapped.pth')
    results = []
    for name in ['sequencer2d_s.pth', 'model.safetensors', 'timm_wrapped.pth']:
        model = Sequencer2D(arch='s', pyramid='native')
        load_pretrained(model, str(tmp_path / name))
        results.append(outputs(model, (56, 84)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_sequencer_converter_is_idempotent_and_inverts_timm(seq_s_sd):
    timm_sd = to_timm(seq_s_sd, [4, 3, 8, 3])
    once = Sequencer2D.convert_checkpoint(timm_sd)
    assert list(once) == list(seq_s_sd)
    assert Sequencer2D.convert_checkpoint(once) == once
    assert Sequencer2D.convert_checkpoint(seq_s_sd) == OrderedDict(seq_s_sd)


def test_dualvit_converter_is_idempotent(dualvit_s_sd):
    wrapped = {'state_dict': {'module.' + k: v for k, v in dualvit_s_sd.items()}, 'epoch': 3}
    once = DualViT.convert_checkpoint(extract_state_dict(wrapped))
    assert list(once) == list(dualvit_s_sd)
    assert DualViT.convert_checkpoint(once) == once


def test_query_from_384_training_loads_and_runs(tmp_path, dualvit_s_sd):
    sd = dict(dualvit_s_sd)
    grid = sd['q'].reshape(8, 8, -1).permute(2, 0, 1)[None]
    sd['q'] = torch.nn.functional.interpolate(grid, size=(12, 12), mode='bicubic')[0].flatten(1).t().contiguous()
    torch.save(sd, tmp_path / 'dualvit_s_384.pth')
    model = DualViT(arch='s')
    load_pretrained(model, str(tmp_path / 'dualvit_s_384.pth'))
    assert model.q.shape == (64, 64)
    for size in [(64, 96), (160, 256), (384, 384)]:
        assert outputs(model, size)[0].shape[-2:] == (size[0] // 4, size[1] // 4)


@pytest.mark.slow
def test_load_log_is_one_line(tmp_path, dualvit_s_sd):
    torch.save(dualvit_s_sd, tmp_path / 'dualvit_s.pth')
    code = ('from mmdualvit.models import DualViT; from mmdualvit.checkpoint import load_pretrained; '
            f'load_pretrained(DualViT(arch="s"), {str(tmp_path / "dualvit_s.pth")!r})')
    proc = run_tool([sys.executable, '-c', code], tmp_path, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert proc.returncode == 0 and len(lines) == 1, lines
    assert lines[0].endswith(
        f'Loaded 540 tensors into DualViT from {tmp_path / "dualvit_s.pth"}: all backbone weights found. '
        'Unused (expected, classifier-only): post_network.* (14), head.* (2), aux_head.* (2), '
        'block4.2.mlp.fc_proxy.* (4).')


# ------------------------------------------------------------------------------------------------ loud failures
def test_missing_file():
    with pytest.raises(CheckpointError) as err:
        load_pretrained(DualViT(arch='s'), 'checkpoints/nope.pth')
    assert str(err.value) == (
        "checkpoint file 'checkpoints/nope.pth' does not exist. Download the official ImageNet weights (README, "
        "'Checkpoints') and place them there, or point the config at them with --cfg-options "
        'model.backbone.init_cfg.checkpoint=PATH (model.backbone.init_cfg=None trains from scratch).')


def test_directory(tmp_path):
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(str(tmp_path))
    assert str(err.value) == (f'checkpoint path {str(tmp_path)!r} is a directory; give the checkpoint file inside '
                              f'it (e.g. {str(tmp_path / "dualvit_s.pth")!r}).')


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_truncated(tmp_path, dualvit_s_sd, suffix):
    path = tmp_path / f'w{suffix}'
    if suffix == '.pth':
        torch.save(dualvit_s_sd, path)
    else:
        save_file({k: v.contiguous() for k, v in dualvit_s_sd.items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_pretrained(DualViT(arch='s'), str(path))
    message = str(err.value)
    assert message.startswith(f'checkpoint file {str(path)!r} is truncated or corrupt (')
    assert message.endswith('); download it again and compare its SHA-256.')


def test_other_variant_lists_shape_mismatches(tmp_path):
    torch.save(official('dualvit_b'), tmp_path / 'dualvit_b.pth')
    with pytest.raises(CheckpointError) as err:
        load_pretrained(DualViT(arch='s'), str(tmp_path / 'dualvit_b.pth'))
    message = str(err.value)
    assert message.startswith(f"checkpoint {str(tmp_path / 'dualvit_b.pth')!r} does not fit this DualViT: ")
    assert re.search(r': (\d+) of 540 tensors have other shapes \(e\.g\. patch_embed1\.conv\.0\.weight: '
                     r'checkpoint \(64, 3, 7, 7\) vs model \(32, 3, 7, 7\);', message)
    assert message.endswith("It is probably another variant or architecture (a Dual-ViT checkpoint); use the "
                            "checkpoint that matches the config's arch, or change `arch`.")
    assert message.count(' vs model ') == 3  # a few at most


def test_other_architecture(tmp_path, seq_s_sd):
    torch.save(seq_s_sd, tmp_path / 'sequencer2d_s.pth')
    with pytest.raises(CheckpointError) as err:
        load_pretrained(DualViT(arch='s'), str(tmp_path / 'sequencer2d_s.pth'))
    message = str(err.value)
    assert message.startswith(f"checkpoint {str(tmp_path / 'sequencer2d_s.pth')!r} lacks 540 of 540 DualViT "
                              'parameters/buffers (e.g. q, q_embed.0.weight, q_embed.0.bias); loading it would leave '
                              'them randomly initialised. The file looks like a Sequencer2D checkpoint')


def test_partial_checkpoint_is_an_error(tmp_path, dualvit_s_sd):
    sd = {k: v for k, v in dualvit_s_sd.items() if not k.startswith('block3.5.')}
    torch.save(sd, tmp_path / 'partial.pth')
    model = DualViT(arch='s')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r'lacks 22 of 540 DualViT parameters/buffers \(e\.g\. '
                                              r'block3\.5\.gamma1, block3\.5\.gamma2, block3\.5\.norm1\.weight\)'):
        load_pretrained(model, str(tmp_path / 'partial.pth'))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), 'nothing may be half-loaded'


def test_unknown_extra_keys_are_an_error(tmp_path, dualvit_s_sd):
    torch.save({**dualvit_s_sd, 'block5.0.weight': torch.zeros(3)}, tmp_path / 'extra.pth')
    with pytest.raises(CheckpointError,
                       match=r"holds 1 tensors this DualViT does not have \(e\.g\. block5\.0\.weight\)"):
        load_pretrained(DualViT(arch='s'), str(tmp_path / 'extra.pth'))


def test_refuses_pickles_needing_unsafe_globals(tmp_path):
    torch.save({'state_dict': {}, 'hook': print}, tmp_path / 'needs_global.pth')
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(str(tmp_path / 'needs_global.pth'))
    # torch < 2.4 names the global with its Python 2 module (__builtin__.print)
    assert re.match(re.escape(f"checkpoint file {str(tmp_path / 'needs_global.pth')!r} needs ") + r'(__builtin__\.)?'
                    + re.escape('print to unpickle, which safe loading (weights_only=True) refuses: unpickling it '
                                'could run code. If you trust where the file comes from, convert it once with'),
                    str(err.value))


class _Payload:
    """Unpickling this object would create a file (the classic pickle exploit)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f'touch {self.target}', ))


def test_malicious_pickle_executes_nothing(tmp_path):
    marker = tmp_path / 'pwned'
    torch.save({'state_dict': {'q': torch.zeros(1)}, 'x': _Payload(marker)}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError, match='needs posix.system to unpickle'):
        load_pretrained(DualViT(arch='s'), str(tmp_path / 'evil.pth'))
    assert not marker.exists()
    # and the same file through mmdualvit's Pretrained init of a backbone config
    model = DualViT(arch='s', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'evil.pth')))
    with pytest.raises(CheckpointError):
        model.init_weights()
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ converters CLI
@pytest.mark.parametrize('tool,name,fmt', [('dualvit2mmdualvit.py', 'dualvit_s', 'official'),
                                           ('sequencer2mmdualvit.py', 'sequencer2d_s', 'timm')])
@pytest.mark.slow
def test_converter_cli(tmp_path, tool, name, fmt):
    sd = official(name)
    src = tmp_path / 'src.pth'
    if fmt == 'timm':
        save_file({k: v.contiguous() for k, v in to_timm(sd, [4, 3, 8, 3]).items()},
                  str(tmp_path / 'src.safetensors'))
        src = tmp_path / 'src.safetensors'
    else:
        src = official_dualvit_file(src, {'state_dict': sd, 'args': argparse.Namespace(a=1), 'epoch': 309})
    dst = tmp_path / 'out' / f'{name}.pth'
    proc = run_tool([sys.executable, REPO / 'tools' / 'model_converters' / tool, src, dst], tmp_path)
    converted = torch.load(dst, map_location='cpu', weights_only=True)
    assert sorted(converted) == sorted(sd)
    assert all(torch.equal(converted[k], sd[k]) for k in sd)
    import hashlib
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    assert f'sha256 {digest}' in proc.stdout
    assert f'kept {len(sd)} tensors' in proc.stdout
    # converting the converted file changes nothing
    again = tmp_path / 'again.pth'
    run_tool([sys.executable, REPO / 'tools' / 'model_converters' / tool, dst, again], tmp_path)
    assert torch.load(again, weights_only=True).keys() == converted.keys()


# ------------------------------------------------------------------------------------------------ through configs
@pytest.mark.parametrize('name,config', [
    ('dualvit_s', 'maskrcnn_dualvit_s_coco.py'), ('dualvit_b', 'upernet_dualvit_b_ade20k.py'),
    ('dualvit_l', 'retinanet_dualvit_l_coco.py'), ('sequencer2d_s', 'maskrcnn_sequencer2d_s_coco.py'),
    ('sequencer2d_m', 'upernet_sequencer2d_m_ade20k.py'), ('sequencer2d_l', 'retinanet_sequencer2d_l_coco.py')])
def test_official_files_load_through_init_cfg_of_full_configs(tmp_path, name, config):
    """Each official format, saved as released, initialises the backbone of a whole detector/segmentor."""
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    sd = official(name)
    if name.startswith('dualvit'):
        path = official_dualvit_file(tmp_path / 'checkpoint-309.pth.tar', {
            'epoch': 309, 'arch': name, 'state_dict': sd, 'optimizer': {'state': {}}, 'version': 2,
            'args': argparse.Namespace(model=name), 'metric': 0.})
    elif name == 'sequencer2d_m':  # timm's release format
        path = tmp_path / 'model.safetensors'
        layers = {'sequencer2d_m': [4, 3, 14, 3]}[name]
        save_file({k: v.contiguous() for k, v in to_timm(sd, layers).items()}, str(path))
    else:  # the official GitHub release (raw state_dict)
        path = tmp_path / f'{name}.pth'
        torch.save(sd, path)
    cfg = Config.fromfile(str(REPO / 'configs' / config))
    cfg.model.backbone.init_cfg.checkpoint = str(path)
    init_default_scope(cfg.default_scope)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, sd[key]), key


OFFICIAL_SEQUENCER_RELEASE = 'https://github.com/okojoalg/sequencer/releases/download/weights'


@pytest.mark.parametrize('config', ['maskrcnn_sequencer2d_s_coco.py', 'upernet_sequencer2d_m_ade20k.py'])
def test_sequencer2d_configs_fetch_the_official_weights_once(http_root, monkeypatch, config):
    """The config's own URL (the authors' GitHub release), served here by a local server: the first build downloads
    the file, the second reads the cache; a wrong file is refused, naming the cached copy to delete."""
    import urllib.request

    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(str(REPO / 'configs' / config))
    arch = cfg.model.backbone.arch
    url = cfg.model.backbone.init_cfg.checkpoint
    assert url == f'{OFFICIAL_SEQUENCER_RELEASE}/sequencer2d_{arch}.pth'
    root, local = http_root
    sd = official(f'sequencer2d_{arch}')
    torch.save(sd, root / f'sequencer2d_{arch}.pth')  # the release format: a raw state_dict
    requested = []
    real_urlopen = urllib.request.urlopen

    def to_local_server(address, *args, **kwargs):
        requested.append(address)
        return real_urlopen(address.replace(OFFICIAL_SEQUENCER_RELEASE, local), *args, **kwargs)

    monkeypatch.setattr(urllib.request, 'urlopen', to_local_server)
    init_default_scope(cfg.default_scope)
    for _ in range(2):
        backbone = MODELS.build(cfg.model.backbone)
        backbone.init_weights()
        assert all(torch.equal(value, sd[key]) for key, value in backbone.state_dict().items())
    assert requested == [url]

    cfg.model.backbone.arch = 'l' if arch != 'l' else 's'  # the cached file is now the wrong one
    with pytest.raises(CheckpointError, match=rf'(does not fit this|lacks \d+ of \d+) Sequencer2D.*Read from the '
                                              rf'download cache: .*sequencer2d_{arch}\.pth; delete that file'):
        MODELS.build(cfg.model.backbone).init_weights()


# ------------------------------------------------------------------------------------------------ ownership
TINY = dict(stem_hidden_dim=8, embed_dims=[16, 32, 32, 48], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 3],
            mlp_ratios=[2, 2, 2, 2])


def test_checkpoint_module_imports_no_model():
    """The loader knows no architecture: no import of mmdualvit.models anywhere in checkpoint.py (no import circle)."""
    import ast
    tree = ast.parse((REPO / 'mmdualvit' / 'checkpoint.py').read_text())
    imported = [node.module or '' for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert imported and not [m for m in imported if 'models' in m], imported


def test_subclass_loads_official_and_timm_files(tmp_path, seq_s_sd):
    class MySeq(Sequencer2D):
        pass

    save_file({k: v.contiguous() for k, v in to_timm(seq_s_sd, [4, 3, 8, 3]).items()}, str(tmp_path / 'm.safetensors'))
    model = MySeq(arch='s', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'm.safetensors')))
    model.init_weights()
    assert all(torch.equal(v, seq_s_sd[k]) for k, v in model.state_dict().items())


def test_semantic_query_is_resized_once(tmp_path, dualvit_s_sd, monkeypatch):
    from mmdualvit.models.backbones import dual_vit
    calls = []
    resize = dual_vit._resize_grid
    monkeypatch.setattr(dual_vit, '_resize_grid', lambda grid, size: calls.append(size) or resize(grid, size))
    sd = dict(dualvit_s_sd)
    sd['q'] = torch.randn(144, 64)  # a 12x12 grid (384-px training)
    torch.save(sd, tmp_path / 'q12.pth')
    load_pretrained(DualViT(arch='s'), str(tmp_path / 'q12.pth'))
    assert calls == [(8, 8)]


def test_mmengine_load_checkpoint_converts_through_the_model(tmp_path, seq_s_sd):
    """Plain mmengine loading (as a detector's load_from does) runs the backbone's own conversion."""
    from mmengine.runner import load_checkpoint
    torch.save(to_timm(seq_s_sd, [4, 3, 8, 3]), tmp_path / 'timm.pth')
    model = Sequencer2D(arch='s')
    load_checkpoint(model, str(tmp_path / 'timm.pth'), strict=False)
    assert all(torch.equal(v, seq_s_sd[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------ init_cfg forms
@pytest.mark.parametrize('form', ['dict', 'list', 'mixed'])
@pytest.mark.parametrize('cls', [DualViT, Sequencer2D])
def test_no_init_cfg_form_gives_a_silent_random_init(cls, form):
    pretrained = dict(type='Pretrained', checkpoint='/nonexistent/weights.pth')
    init_cfg = {'dict': pretrained, 'list': [pretrained],
                'mixed': [dict(type='Constant', layer='Linear', val=0.5), pretrained]}[form]
    model = cls(arch=TINY if cls is DualViT else 's', init_cfg=init_cfg)
    with pytest.raises(CheckpointError, match="checkpoint file '/nonexistent/weights.pth' does not exist"):
        model.init_weights()


def test_constant_init_is_honoured():
    model = DualViT(arch=TINY, init_cfg=dict(type='Constant', layer='Linear', val=0.5, bias=0.25))
    model.init_weights()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all((m.weight == 0.5).all() and (m.bias == 0.25).all() for m in linears)
    assert (model.q != 0).any(), 'the official init still runs for the rest'


def test_pretrained_wins_over_other_inits(tmp_path):
    source = DualViT(arch=TINY)
    source.init_weights()
    torch.save(source.state_dict(), tmp_path / 'tiny.pth')
    model = DualViT(arch=TINY, init_cfg=[dict(type='Constant', layer='Linear', val=0.5),
                                         dict(type='Pretrained', checkpoint=str(tmp_path / 'tiny.pth'))])
    model.init_weights()
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize('init_cfg', [dict(type='pretrained', checkpoint='w.pth'),
                                      [dict(type='Pretrained', checkpoint='w.pth'), dict(type='Constnt', val=1)],
                                      dict(checkpoint='w.pth'), 'w.pth'])
@pytest.mark.parametrize('cls', [DualViT, Sequencer2D])
def test_unknown_init_cfg_types_are_errors(cls, init_cfg):
    with pytest.raises(ValueError, match=f'{cls.__name__}: (unknown init_cfg type|init_cfg must be a dict)'):
        cls(arch=TINY if cls is DualViT else 's', init_cfg=init_cfg)


def test_pretrained_without_checkpoint_is_an_error():
    with pytest.raises(ValueError, match="names no checkpoint; add checkpoint='PATH'"):
        DualViT(arch=TINY, init_cfg=dict(type='Pretrained'))


# ------------------------------------------------------------------------------------------------ bad files, converters
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_bytes_are_called_corrupt(tmp_path, seed):
    path = tmp_path / 'random.pth'
    path.write_bytes(torch.randint(0, 256, (4096, ), generator=torch.Generator().manual_seed(seed),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(str(path))
    message = str(err.value)
    assert message.startswith(f'checkpoint file {str(path)!r} is truncated or corrupt (')
    assert 'trust' not in message and 'Weights only' not in message


@pytest.mark.parametrize('converter,src_name,other', [(DualViT, 'sequencer2d_s', 'a Sequencer2D checkpoint'),
                                                      (Sequencer2D, 'dualvit_s', 'a Dual-ViT checkpoint')])
def test_converter_refuses_the_other_architecture(tmp_path, capsys, converter, src_name, other):
    from mmdualvit.checkpoint import converter_cli
    torch.save(official(src_name), tmp_path / 'src.pth')
    with pytest.raises(SystemExit) as exit_info:
        converter_cli(converter, 'test', [str(tmp_path / 'src.pth'), str(tmp_path / 'dst.pth')])
    assert exit_info.value.code == 2
    assert (f"error: {str(tmp_path / 'src.pth')!r} is not a {converter.__name__} checkpoint: it looks like {other}"
            in capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ['src.pth']


def test_failed_conversion_leaves_no_temporary_and_says_disk_full(tmp_path, monkeypatch, dualvit_s_sd):
    from mmdualvit import checkpoint
    torch.save(dualvit_s_sd, tmp_path / 'src.pth')
    (tmp_path / 'out').mkdir()

    def save_then_fail(obj, f):
        f.write(b'half a file')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(checkpoint.torch, 'save', save_then_fail)
    with pytest.raises(CheckpointError, match=r"disk full while writing '.*dst\.pth' \(nothing was written\)"):
        checkpoint.convert_checkpoint_file(str(tmp_path / 'src.pth'), str(tmp_path / 'out' / 'dst.pth'), DualViT)
    assert os.listdir(tmp_path / 'out') == []


# ------------------------------------------------------------------------------------------------ remote files
def test_pretrained_over_http(http_root):
    root, url = http_root
    source = DualViT(arch=TINY)
    source.init_weights()
    torch.save({'state_dict': source.state_dict()}, root / 'tiny.pth')
    model = DualViT(arch=TINY, init_cfg=[dict(type='Pretrained', checkpoint=f'{url}/tiny.pth')])
    model.init_weights()
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())

    with pytest.raises(CheckpointError, match=rf"checkpoint '{url}/absent.pth' could not be fetched \(HTTPError"):
        read_checkpoint(f'{url}/absent.pth')


def test_http_pickle_is_read_with_weights_only(http_root, tmp_path):
    root, url = http_root
    marker = tmp_path / 'pwned'
    torch.save({'state_dict': {'q': torch.zeros(1)}, 'x': _Payload(marker)}, root / 'evil.pth')
    with pytest.raises(CheckpointError, match=rf"checkpoint file '{url}/evil.pth' needs posix.system to unpickle"):
        read_checkpoint(f'{url}/evil.pth')
    assert not marker.exists()
