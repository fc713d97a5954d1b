"""ONNX export (mmdualvit.deployment, tools/deployment/export_onnx.py): onnxruntime reproduces PyTorch.

Backbones are checked at their full variant structure with reduced depths (each variant's widths, heads and stage
layout, fewer blocks), Dual-ViT-S and Sequencer2D-S once at full depth with the reference weights (slow), and whole
systems with reduced-depth backbones and 64-channel necks and heads. Shapes are small; a graph that does not match
is never written. Skipped, saying so, where onnx or onnxruntime is not installed.
"""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

for _package in ('onnx', 'onnxruntime'):
    pytest.importorskip(_package, reason=f'the ONNX export tests need {_package}: pip install -r requirements/onnx.txt')

import mmdualvit  # noqa: E402,F401  (registers the models)
from mmdualvit.deployment import (TOLERANCE, ExportError, ExportWrapper, MatMulAdaptiveAvgPool2d,  # noqa: E402
                                  build_model, export_onnx, group_outputs, predict_with_onnx, run_onnx, trace_onnx,
                                  verify_onnx)
from mmdualvit.models import DualViT, Sequencer2D  # noqa: E402
from mmdualvit.models.backbones.resample import antialias_matrix, resample_bilinear  # noqa: E402
from tests.utils import REPO, load_module, load_reference_weights  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded_weights():
    """Randomly initialised models are the same on every run: an unseeded ATSS failed the onnxruntime check about
    once in six runs (centerness of the 1x2 P7 map, whose largest magnitude, the check's scale, is then tiny)."""
    torch.manual_seed(0)


CONFIGS = REPO / 'configs'


def _reduced(cls, arch, depths):
    """``arch``'s settings (widths, heads, strides) with fewer blocks per stage."""
    return dict(cls.arch_zoo[arch], depths=list(depths))


def dualvit_arch(arch='s', depths=(1, 1, 1, 1)):
    return _reduced(DualViT, arch, depths)


def sequencer_arch(arch='s', depths=(1, 1, 1, 1)):
    return _reduced(Sequencer2D, arch, depths)


def _export_and_verify(wrapper, shape, path, dynamic=False, more_shapes=()):
    """export_onnx (checked at ``shape`` and, if dynamic, a second size), then the file at ``more_shapes`` too."""
    results = export_onnx(wrapper, shape, str(path), dynamic=dynamic)
    assert path.exists()
    assert [s for s, _ in results][0] == (1, 3, *shape) and len(results) == (2 if dynamic else 1)
    verify_onnx(wrapper, str(path), [torch.randn(1, 3, *s, generator=torch.Generator().manual_seed(2))
                                     for s in more_shapes])
    return [errors for _, errors in results]


# ---------------------------------------------------------------------------------------------- resampling
@pytest.mark.parametrize('scale', [14 / 16, 14 / 32, 0.5, 0.3])
@pytest.mark.parametrize('size_in', [4, 7, 16, 58, 97])
def test_antialias_matrix_is_torchs_kernel(scale, size_in):
    """In float64 (no rounding to speak of) F.interpolate(antialias=True) is our matrix, row for row."""
    size_out = math.floor(size_in * scale)
    if size_out < 1:
        pytest.skip('no output cell')
    eye = torch.eye(size_in, dtype=torch.float64)[None, None]
    torch_weights = F.interpolate(eye, scale_factor=(1.0, scale), mode='bilinear', align_corners=False,
                                  recompute_scale_factor=False, antialias=True)[0, 0].T
    torch.testing.assert_close(antialias_matrix(size_in, size_out, scale), torch_weights, rtol=0, atol=1e-13)


def test_resample_bilinear_float32():
    """Shrinking: within 1e-6 of the float64 result (measured worst 4.7e-7 for unit-variance inputs), which
    F.interpolate's own float32 kernel misses by up to 3e-5 (its float32 weights); enlarging: F.interpolate."""
    x = torch.randn(2, 8, 58, 97, generator=torch.Generator().manual_seed(0))
    for scale in (14 / 16, 14 / 32):
        size = (math.floor(58 * scale), math.floor(97 * scale))
        exact = antialias_matrix(58, size[0], scale) @ x.double() @ antialias_matrix(97, size[1], scale).T
        assert (resample_bilinear(x, scale, size).double() - exact).abs().max() < 1e-6
        interpolated = F.interpolate(x, scale_factor=scale, mode='bilinear', align_corners=False,
                                     recompute_scale_factor=False, antialias=True)
        torch.testing.assert_close(resample_bilinear(x, scale, size), interpolated, rtol=0, atol=5e-5)
    enlarged = F.interpolate(x, scale_factor=1.75, mode='bilinear', align_corners=False,
                             recompute_scale_factor=False)[..., :100, :160]
    assert torch.equal(resample_bilinear(x, 1.75, (100, 160)), enlarged)
    assert resample_bilinear(x.bfloat16(), 14 / 32, (25, 42)).dtype == torch.bfloat16
    with torch.autocast('cpu', dtype=torch.bfloat16):  # computed in float32 all the same
        shrunk = resample_bilinear(x, 14 / 32, (25, 42))
    assert shrunk.dtype == torch.float32 and torch.equal(shrunk, resample_bilinear(x, 14 / 32, (25, 42)))


@pytest.mark.parametrize('output_size', [1, 2, 3, 6, (4, None)])
def test_matmul_adaptive_pool_equals_torch(output_size):
    x = torch.randn(2, 4, 16, 11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(MatMulAdaptiveAvgPool2d(output_size)(x), nn.AdaptiveAvgPool2d(output_size)(x),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize('arch', ['s', *(pytest.param(a, marks=pytest.mark.slow) for a in 'ml')])
def test_sequencer2d_export_structure(arch, tmp_path):
    """Reduced depth, each variant's widths; fixed shapes, so each size is its own export. In the graph the
    antialiased shrink (levels 3-4) is MatMul; only the enlarged levels 1-2 use Resize, next to the LSTMs."""
    import onnx
    model = Sequencer2D(arch=sequencer_arch(arch)).eval()
    model.init_weights()
    for shape in [(64, 96), (97, 131)]:
        errors = _export_and_verify(ExportWrapper(model), shape, tmp_path / 'seq.onnx')
        assert list(errors[0]) == ['feats.0', 'feats.1', 'feats.2', 'feats.3']
        ops = [node.op_type for node in onnx.load(str(tmp_path / 'seq.onnx')).graph.node]
        # one bidirectional LSTM per direction per block
        assert ops.count('Resize') == 2 and ops.count('MatMul') >= 4 and ops.count('LSTM') == 2 * 4


def test_sequencer2d_native_exports_with_dynamic_shapes(tmp_path):
    """The LSTMs themselves export exactly at any size: the native pyramid is dynamic."""
    model = Sequencer2D(arch=sequencer_arch(), pyramid='native').eval()
    model.init_weights()
    _export_and_verify(ExportWrapper(model), (70, 98), tmp_path / 'seq.onnx', dynamic=True,
                       more_shapes=[(112, 84)])


@pytest.mark.parametrize('arch', ['s', *(pytest.param(a, marks=pytest.mark.slow) for a in 'bl')])
def test_dualvit_export_structure_dynamic(arch, tmp_path):
    model = DualViT(arch=dualvit_arch(arch, (1, 1, 2, 1))).eval()
    model.init_weights()
    _export_and_verify(ExportWrapper(model), (96, 128), tmp_path / 'dv.onnx', dynamic=True,
                       more_shapes=[(128, 160)])


@pytest.mark.slow
def test_full_depth_s_backbones_with_reference_weights(reference_weights, tmp_path):
    """Dual-ViT-S (dynamic: 224 x 320 and 288 x 416) and Sequencer2D-S (fixed), the official structure and weights.
    (Sequencer2D at a second size: test_sequencer2d_export_structure.)"""
    dualvit = load_reference_weights(DualViT(arch='s'), reference_weights('dualvit_s')).eval()
    _export_and_verify(ExportWrapper(dualvit), (224, 320), tmp_path / 'dv.onnx', dynamic=True)
    sequencer = load_reference_weights(Sequencer2D(arch='s'), reference_weights('sequencer2d_s')).eval()
    _export_and_verify(ExportWrapper(sequencer), (224, 320), tmp_path / 'seq.onnx')


def test_dynamic_export_refused_for_resampled_sequencer2d(tmp_path):
    path = tmp_path / 'seq.onnx'
    with pytest.raises(ExportError, match=r"Sequencer2D\(pyramid='resample'\) cannot be exported with dynamic "
                                          r'shapes.*--shape H W, without --dynamic'):
        export_onnx(ExportWrapper(Sequencer2D(arch=sequencer_arch())), (64, 96), str(path), dynamic=True)
    assert not path.exists()


def test_dynamic_export_refused_at_dualvits_query_grid(tmp_path):
    """At 224 x 224 the semantic grid is the queries' own 8 x 8: a dynamic graph traced there lacks the resize."""
    model = DualViT(arch=dualvit_arch()).eval()
    with pytest.raises(ExportError, match=r'Dual-ViT traced at 224x224 has a 8x8 semantic grid.*--shape 256 256'):
        export_onnx(ExportWrapper(model), (224, 224), str(tmp_path / 'dv.onnx'), dynamic=True)
    assert not (tmp_path / 'dv.onnx').exists()


def test_dynamic_export_refused_with_test_tiles(tmp_path):
    """test_tile_size (on in the UperNet Dual-ViT configs) picks whole image or tiles in Python: a dynamic graph
    would hold the export size's choice at every size."""
    model = DualViT(arch=dualvit_arch(), test_tile_size=64).eval()
    with pytest.raises(ExportError, match=r'Dual-ViT with test_tile_size=64 chooses whole image or tiles from the '
                                          r'input size.*model.backbone.test_tile_size=None'):
        export_onnx(ExportWrapper(model), (96, 128), str(tmp_path / 'dv.onnx'), dynamic=True)
    assert not (tmp_path / 'dv.onnx').exists()


def test_verify_fails_a_graph_that_no_longer_matches():
    """A graph that no longer computes what the model computes (here: a weight changed after export)."""
    model = DualViT(arch=dualvit_arch()).eval()
    wrapper = ExportWrapper(model)
    model_bytes, x = trace_onnx(wrapper, (64, 64))
    assert max(verify_onnx(wrapper, model_bytes, [x])[0].values()) <= TOLERANCE
    with torch.no_grad():
        model.norm4.bias.add_(0.01)
    with pytest.raises(ExportError, match=r'does not match PyTorch at input \(1, 3, 64, 64\): output feats.3 differs '
                                          r'by .* x its largest magnitude \(tolerance 1e-04\)'):
        verify_onnx(wrapper, model_bytes, [x])


class _FrozenBranch(nn.Module):
    """Chooses its computation from the input width in Python: a trace keeps the branch of the export size."""

    def forward(self, x):
        return (x * 2 if x.shape[-1] < 80 else x * 3, )


def test_export_writes_nothing_when_the_second_size_differs(tmp_path):
    """The dynamic graph traced at 64 x 64 computes x * 2 at the second size (96 x 96) too, where PyTorch
    computes x * 3: the check there fails and no file appears; a file already at the path is left as it was."""
    path = tmp_path / 'frozen.onnx'
    with pytest.raises(ExportError, match=r'does not match PyTorch at input \(1, 3, 96, 96\): output feats.0 '
                                          r'differs by 3.3\de-01 .* Nothing was written to .*frozen.onnx'):
        export_onnx(ExportWrapper(_FrozenBranch()), (64, 64), str(path), dynamic=True)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b'earlier export')
    with pytest.raises(ExportError, match='Nothing was written'):
        export_onnx(ExportWrapper(_FrozenBranch()), (64, 64), str(path), dynamic=True)
    assert path.read_bytes() == b'earlier export' and len(list(tmp_path.iterdir())) == 1
    export_onnx(ExportWrapper(_FrozenBranch()), (64, 64), str(path))  # fixed shape: correct where it is used
    np.testing.assert_array_equal(run_onnx(str(path), torch.ones(1, 3, 64, 64))[0], np.full((1, 3, 64, 64), 2.0))


# ---------------------------------------------------------------------------------------------- whole systems
def small_backbone(arch: dict) -> dict:
    """cfg_options replacing the config's backbone arch name by ``arch`` (a fresh dict: merging consumes it)."""
    return {'model.backbone.arch': dict(arch, _delete_=True)}


def small_system(config: str, arch: dict) -> dict:
    """cfg_options for a fast test of ``config``: the reduced backbone, and a 64-channel neck and heads (the same
    layers, narrower). Mask R-CNN keeps its widths (its RoI heads name them in several places)."""
    options = small_backbone(arch)
    if config.startswith('upernet'):
        options.update({'model.decode_head.channels': 64, 'model.auxiliary_head.channels': 64})
    if config.startswith('upernet_dualvit'):  # its test-time tiles refuse a dynamic export (tested above)
        options['model.backbone.test_tile_size'] = None
    elif config.startswith(('retinanet', 'atss', 'gfl')):
        options.update({'model.neck.out_channels': 64, 'model.bbox_head.in_channels': 64,
                        'model.bbox_head.feat_channels': 64})
    return options


DUALVIT_SMALL = dualvit_arch()
SEQUENCER_SMALL = sequencer_arch()


@pytest.mark.parametrize('config, arch, shape, dynamic, names', [
    ('retinanet_dualvit_s_coco.py', DUALVIT_SMALL, (96, 128), True, ('cls_scores', 'bbox_preds')),
    ('atss_dualvit_s_3x_coco.py', DUALVIT_SMALL, (96, 128), True, ('cls_scores', 'bbox_preds', 'score_factors')),
    ('gfl_dualvit_s_3x_coco.py', DUALVIT_SMALL, (96, 128), True, ('cls_scores', 'bbox_preds')),
    ('maskrcnn_sequencer2d_s_coco.py', SEQUENCER_SMALL, (96, 128), False, ('feats', )),
    pytest.param('upernet_dualvit_s_ade20k.py', DUALVIT_SMALL, (96, 128), True, ('seg_logits', ),
                 marks=pytest.mark.slow),
    ('upernet_sequencer2d_s_ade20k.py', SEQUENCER_SMALL, (96, 128), False, ('seg_logits', )),
    pytest.param('imagenet_dualvit_s.py', DUALVIT_SMALL, (96, 128), True, ('logits', ), marks=pytest.mark.slow),
])
def test_system_export(config, arch, shape, dynamic, names, tmp_path):
    model, _ = build_model(str(CONFIGS / config), cfg_options=small_system(config, arch))
    wrapper = ExportWrapper(model)
    more = [(shape[0] + 32, shape[1] + 64)] if dynamic else []
    _export_and_verify(wrapper, shape, tmp_path / 'model.onnx', dynamic=dynamic, more_shapes=more)
    groups = group_outputs(wrapper.output_names, wrapper.output_names)
    assert tuple(groups) == names
    levels = {'cls_scores': 5, 'feats': 5}
    for name, count in levels.items():
        if name in groups:
            assert len(groups[name]) == count


# ---------------------------------------------------------------------------------------------- the tool
TOOL = REPO / 'tools' / 'deployment' / 'export_onnx.py'


def _tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope='module')
def tool_main():
    """The tool's ``main(argv)``, run in this process (the fast way to test its arguments and refusals)."""
    return load_module(TOOL, 'export_onnx_tool').main


def _small_config(tmp_path, config, arch):
    """``config`` with a reduced-depth backbone arch, as a config file of its own."""
    path = tmp_path / f'small_{config}'
    arch = dict(arch, _delete_=True)
    path.write_text(f"_base_ = '{CONFIGS / config}'\nmodel = dict(backbone=dict(arch={arch!r}))\n")
    return path


@pytest.mark.slow  # a subprocess through tools/
def test_tool_writes_a_verified_file(tmp_path):
    """A whole-model checkpoint: the file computes what the checkpoint's model computes."""
    config = _small_config(tmp_path, 'retinanet_sequencer2d_s_coco.py', sequencer_arch())
    model, _ = build_model(str(config))
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, tmp_path / 'retinanet.pth')
    out = tmp_path / 'dir' / 'retinanet.onnx'
    proc = _tool(config, tmp_path / 'retinanet.pth', '--shape', 64, 96, '--out', out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'UNTRAINED' not in proc.stderr
    assert 'onnxruntime matches PyTorch at (1, 3, 64, 96): 10 outputs, largest error' in proc.stdout
    assert f'wrote {out} (dense_detector: cls_scores.0,' in proc.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ['retinanet.onnx']  # no temporary left behind
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = ExportWrapper(model)(x)
    outputs = run_onnx(str(out), x)
    assert [o.shape for o in outputs[:5]] == [(1, 9 * 80, math.ceil(64 / s), math.ceil(96 / s))
                                              for s in (8, 16, 32, 64, 128)]
    for out_onnx, out_torch in zip(outputs, expected):
        np.testing.assert_allclose(out_onnx, out_torch.numpy(), rtol=0, atol=TOLERANCE * out_torch.abs().max())


@pytest.mark.parametrize('args, message', [
    ([], 'no CHECKPOINT given. An export of untrained weights computes noise: pass the checkpoint'),
    (['ckpt.pth', '--random-weights'], 'give a CHECKPOINT or --random-weights, not both'),
    (['--random-weights', '--shape', '0', '64'], '--shape needs positive sizes, got 0 64'),
    (['--random-weights', '--out', 'model.pt'], "--out 'model.pt': name the file to write, ending in .onnx"),
    (['--random-weights', '--out', '/dev/null/model.onnx'],
     "--out '/dev/null/model.onnx' cannot be written: '/dev/null' is a file, not a directory; choose another path"),
    (['missing.pth'], "checkpoint file 'missing.pth' does not exist"),
])
def test_tool_refuses_bad_arguments(tool_main, args, message, tmp_path, capsys):
    config = str(CONFIGS / 'retinanet_dualvit_s_coco.py')
    argv = [config, *args] + ([] if '--shape' in args else ['--shape', '64', '64'])
    argv += [] if '--out' in args else ['--out', str(tmp_path / 'model.onnx')]
    with pytest.raises(SystemExit) as exit_info:
        tool_main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_tool_refuses_a_missing_config(tool_main, tmp_path, capsys):
    with pytest.raises(SystemExit):
        tool_main([str(tmp_path / 'nope.py'), '--random-weights', '--shape', '64', '64', '--out', 'x.onnx'])
    assert f"config file '{tmp_path / 'nope.py'}' does not exist" in capsys.readouterr().err


def test_tool_refuses_dynamic_sequencer2d_and_writes_nothing(tool_main, tmp_path, capsys):
    out = tmp_path / 'seq.onnx'
    config = _small_config(tmp_path, 'upernet_sequencer2d_s_ade20k.py', sequencer_arch())
    assert tool_main([str(config), '--random-weights', '--shape', '64', '96', '--dynamic', '--backbone-only',
                      '--out', str(out)]) == 1
    err = capsys.readouterr().err
    assert 'WARNING: --random-weights: the exported model is UNTRAINED' in err
    assert "error: Sequencer2D(pyramid='resample') cannot be exported with dynamic shapes" in err
    assert not out.exists()


def test_tool_refuses_an_input_too_small(tool_main, tmp_path, capsys):
    config = _small_config(tmp_path, 'retinanet_dualvit_s_coco.py', dualvit_arch())
    out = tmp_path / 'dv.onnx'
    assert tool_main([str(config), '--random-weights', '--shape', '16', '64', '--backbone-only',
                      '--out', str(out)]) == 1
    assert 'error: the model cannot run at the export size 16x64: DualViT needs inputs of at least' in \
        capsys.readouterr().err
    assert not out.exists()


def test_tool_checkpoint_needs_trust_for_pickled_objects(tool_main, tmp_path, capsys):
    """The checkpoint goes through mmdualvit.checkpoint: weights_only unless --trust-checkpoint."""
    arch = dualvit_arch()
    backbone = DualViT(arch=arch)
    backbone.init_weights()
    torch.save({'model': backbone.state_dict(), 'hook': print}, tmp_path / 'dualvit.pth')  # print: a global
    config = _small_config(tmp_path, 'retinanet_dualvit_s_coco.py', arch)
    out = tmp_path / 'dv.onnx'
    argv = [str(config), str(tmp_path / 'dualvit.pth'), '--shape', '64', '96', '--backbone-only', '--out', str(out)]
    with pytest.raises(SystemExit) as exit_info:
        tool_main(argv)
    assert exit_info.value.code == 2 and '--trust-checkpoint' in capsys.readouterr().err and not out.exists()
    assert tool_main(argv + ['--trust-checkpoint']) == 0
    assert 'UNTRAINED' not in capsys.readouterr().err
    with torch.no_grad():
        expected = backbone.eval()(torch.ones(1, 3, 64, 96))
    for out_onnx, out_torch in zip(run_onnx(str(out), torch.ones(1, 3, 64, 96)), expected):
        np.testing.assert_allclose(out_onnx, out_torch.numpy(), rtol=0, atol=TOLERANCE * out_torch.abs().max())


@pytest.mark.slow
def test_tool_backbone_only_dynamic(tool_main, tmp_path, capsys):
    """--backbone-only --dynamic: Dual-ViT checked at the export size and at a second size."""
    config = _small_config(tmp_path, 'retinanet_dualvit_s_coco.py', dualvit_arch())
    out = tmp_path / 'dv.onnx'
    assert tool_main([str(config), '--random-weights', '--shape', '64', '96', '--dynamic', '--backbone-only',
                      '--out', str(out)]) == 0
    stdout = capsys.readouterr().out
    assert 'onnxruntime matches PyTorch at (1, 3, 64, 96): 4 outputs' in stdout
    assert 'onnxruntime matches PyTorch at (1, 3, 96, 128): 4 outputs' in stdout
    assert f'wrote {out} (backbone: feats.0, feats.1, feats.2, feats.3)' in stdout


# ---------------------------------------------------------------------------------------------- end to end
def _test_batch(cfg, image, scale):
    """The config's test pipeline on an in-memory image, resized to fit ``scale`` (W, H), collated."""
    from mmengine.dataset import Compose, pseudo_collate
    pipeline = [dict(step) for step in cfg.test_dataloader.dataset.pipeline]
    pipeline[0] = dict(type='LoadImageFromNDArray')
    pipeline = [dict(step, scale=scale) if step['type'] == 'Resize' else step for step in pipeline]
    pipeline = [step for step in pipeline if step['type'] != 'LoadAnnotations']
    sample = Compose(pipeline)(dict(img=image, img_id=0, img_path=''))
    return pseudo_collate([sample])


def _image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[height // 4:height // 2, width // 3:2 * width // 3] = (250, 20, 20)  # a block with structure
    return image


def test_detector_end_to_end(tmp_path):
    """RetinaNet + Dual-ViT: onnxruntime's head outputs through mmdet's predict_by_feat = PyTorch's predict."""
    config = 'retinanet_dualvit_s_coco.py'
    model, cfg = build_model(str(CONFIGS / config), cfg_options=small_system(config, DUALVIT_SMALL))
    torch.manual_seed(0)
    # spread the random head's scores so that many boxes pass score_thr and their order is well defined
    nn.init.normal_(model.bbox_head.retina_cls.weight, std=0.05)
    nn.init.zeros_(model.bbox_head.retina_cls.bias)
    path = tmp_path / 'retinanet.onnx'
    export_onnx(ExportWrapper(model), (96, 128), str(path), dynamic=True)
    data = _test_batch(cfg, _image(150, 230), (200, 120))  # keep-ratio resize: 120 x 184, padded to 128 x 192
    with torch.no_grad():
        expected = model.test_step(data)[0].pred_instances
    result = predict_with_onnx(model, str(path), _test_batch(cfg, _image(150, 230), (200, 120)))[0]
    assert result.metainfo['scale_factor'] != (1.0, 1.0) and result.metainfo['batch_input_shape'] == (128, 192)
    got = result.pred_instances
    assert len(expected) == len(got) == cfg.model.test_cfg.max_per_img
    # one to one: the same label, the score within 1e-5, the box (original-image pixels, rescaled by 230/184)
    # within 1e-3; matched rather than sorted, as boxes of equal score may come in either order
    unmatched = list(range(len(got)))
    for label, score, box in zip(expected.labels, expected.scores, expected.bboxes):
        candidates = [j for j in unmatched if got.labels[j] == label and abs(got.scores[j] - score) <= 1e-5]
        assert candidates, f'no detection of label {label} with score {score} from onnxruntime'
        errors = [float((got.bboxes[j] - box).abs().max()) for j in candidates]
        assert min(errors) <= 1e-3, f'box {box.tolist()}: nearest onnxruntime box is {min(errors):.1e} px away'
        unmatched.remove(candidates[errors.index(min(errors))])


def test_segmentor_end_to_end(tmp_path):
    """UperNet + Sequencer2D (fixed shape): onnxruntime's logits through mmseg's resize and argmax = predict."""
    config = 'upernet_sequencer2d_s_ade20k.py'
    model, cfg = build_model(str(CONFIGS / config), cfg_options=small_system(config, SEQUENCER_SMALL))
    path = tmp_path / 'upernet.onnx'
    with torch.no_grad():  # keep-ratio resize to 94 x 144, no padding at test
        batch_shape = model.data_preprocessor(_test_batch(cfg, _image(130, 200), (144, 96)), False)['inputs'].shape
    assert tuple(batch_shape[2:]) == (94, 144)
    export_onnx(ExportWrapper(model), (94, 144), str(path))
    with pytest.raises(ExportError, match=r'exported for inputs of shape \[1, 3, 94, 144\], but this batch is '
                                          r'\(1, 3, 104, 160\) after preprocessing: export it with --shape 104 160'):
        predict_with_onnx(model, str(path), _test_batch(cfg, _image(130, 200), (160, 104)))
    with torch.no_grad():
        expected = model.test_step(_test_batch(cfg, _image(130, 200), (144, 96)))[0]
    got = predict_with_onnx(model, str(path), _test_batch(cfg, _image(130, 200), (144, 96)))[0]
    assert got.pred_sem_seg.shape == expected.pred_sem_seg.shape == (130, 200)
    assert torch.equal(got.pred_sem_seg.data, expected.pred_sem_seg.data)
    torch.testing.assert_close(got.seg_logits.data, expected.seg_logits.data, rtol=0,
                               atol=TOLERANCE * float(expected.seg_logits.data.abs().max()))
