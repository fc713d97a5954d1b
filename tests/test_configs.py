"""Every config under configs/ loads, builds and runs; the real configs carry the official training settings."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmdualvit.analysis import build_from_config, synthetic_batch

REPO = Path(__file__).resolve().parents[1]
# ImageNet classifier configs (imagenet_*.py) are covered by tests/test_models/test_classifiers.py.
CONFIGS = sorted(p for p in (REPO / 'configs').rglob('*.py')
                 if '_base_' not in p.parts and not p.name.startswith('imagenet_'))
REAL = [p for p in CONFIGS if p.parent.name == 'configs']


def config_id(path):
    return str(path.relative_to(REPO / 'configs'))


def build_model(cfg):
    if cfg.default_scope == 'mmseg':
        cfg.model.data_preprocessor.size = (64, 96)  # the real configs pad to 512x512 crops; keep the test small
    model, _ = build_from_config(cfg)
    model.init_weights()
    return model


@pytest.mark.parametrize('path', CONFIGS, ids=config_id)
def test_config_builds_trains_and_predicts(path):
    cfg = Config.fromfile(str(path))
    model = build_model(cfg)
    # Two images for mmseg: BN in the pyramid-pooling head needs more than one value per channel in training.
    batch = synthetic_batch(cfg, (64, 96), batch_size=1 if cfg.default_scope == 'mmdet' else 2)
    model.train()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert backbone_grads and all(g is not None for g in backbone_grads), 'some backbone parameters got no gradient'
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        results = model(**data, mode='predict')
    assert len(results) == len(batch['inputs'])
    if cfg.default_scope == 'mmdet':
        assert 'pred_instances' in results[0]
    else:
        assert results[0].pred_sem_seg.data.shape[-2:] == (64, 96)


# Official settings: the authors' configs in github.com/YehLi/ImageNetModel, object_detection/configs/dualvit/ (the 3x
# ones were deleted on 2022-08-08; see the commit before 8039229) and semantic_segmentation/configs/dualvit/.
# Sequencer2D configs use the Dual-ViT recipe of the same family.
DET_1X = dict(epochs=12, milestones=[8, 11], warmup=500, batch=2, paramwise=None, loss_scale=512.)
DET_3X = dict(epochs=36, milestones=[27, 33], warmup=500, batch=1, paramwise=['absolute_pos_embed',
              'relative_position_bias_table', 'norm'], loss_scale=512.)
MASK = dict(lr=2e-4, wd=1e-4)
RETINA = dict(lr=1e-4, wd=1e-4)
EXPECTED = {
    'maskrcnn_dualvit_s_coco.py': dict(DET_1X, **MASK, arch='s', dpr=0.15, dims=[64, 128, 320, 448]),
    'maskrcnn_dualvit_b_coco.py': dict(DET_1X, **MASK, arch='b', dpr=0.15, dims=[64, 128, 320, 512]),
    'maskrcnn_dualvit_l_coco.py': dict(DET_1X, **MASK, arch='l', dpr=0.3, dims=[96, 192, 384, 512]),
    'maskrcnn_dualvit_s_3x_coco.py': dict(DET_3X, lr=1e-4, wd=0.05, arch='s', dpr=0.15, dims=[64, 128, 320, 448]),
    'retinanet_dualvit_s_coco.py': dict(DET_1X, **RETINA, arch='s', dpr=0.15, dims=[64, 128, 320, 448]),
    'retinanet_dualvit_b_coco.py': dict(DET_1X, **RETINA, arch='b', dpr=0.15, dims=[64, 128, 320, 512]),
    'retinanet_dualvit_l_coco.py': dict(DET_1X, **RETINA, arch='l', dpr=0.3, dims=[96, 192, 384, 512]),
    'retinanet_dualvit_s_3x_coco.py': dict(DET_3X, lr=1e-4, wd=0.05, arch='s', dpr=0.15, dims=[64, 128, 320, 448]),
}
for _v in 'sml':
    EXPECTED[f'maskrcnn_sequencer2d_{_v}_coco.py'] = dict(DET_1X, **MASK, arch=_v, dpr=0.1, dims=[192, 384, 384, 384])
    EXPECTED[f'retinanet_sequencer2d_{_v}_coco.py'] = dict(DET_1X, **RETINA, arch=_v, dpr=0.1,
                                                           dims=[192, 384, 384, 384])
SEG = dict(lr=6e-5, wd=0.01, iters=160000, warmup=1500, batch=2, loss_scale=512.)
EXPECTED.update({
    'upernet_dualvit_s_ade20k.py': dict(SEG, arch='s', dpr=0.15, dims=[64, 128, 320, 448]),
    'upernet_dualvit_b_ade20k.py': dict(SEG, arch='b', dpr=0.3, dims=[64, 128, 320, 512]),
    'upernet_dualvit_l_ade20k.py': dict(SEG, arch='l', dpr=0.3, dims=[96, 192, 384, 512]),
})
for _v in 'sml':
    EXPECTED[f'upernet_sequencer2d_{_v}_ade20k.py'] = dict(SEG, arch=_v, dpr=0.1, dims=[192, 384, 384, 384])


def test_every_real_config_has_an_expectation():
    assert sorted(p.name for p in REAL) == sorted(EXPECTED)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_official_settings(name):
    cfg = Config.fromfile(str(REPO / 'configs' / name))
    exp = EXPECTED[name]
    backbone = cfg.model.backbone
    assert backbone.arch == exp['arch'] and backbone.drop_path_rate == exp['dpr']
    assert backbone.init_cfg.type == 'Pretrained' and backbone.init_cfg.checkpoint.startswith('checkpoints/')
    assert cfg.custom_imports.imports == ['mmdualvit'] and not cfg.custom_imports.allow_failed_imports
    assert cfg.runner_type == 'mmdualvit.StrictRunner' and 'strict_load' not in cfg
    assert cfg.default_hooks.checkpoint.type == 'mmdualvit.PortableCheckpointHook'
    optim = cfg.optim_wrapper
    assert optim.type == 'AmpOptimWrapper' and optim.loss_scale == exp['loss_scale']
    assert optim.optimizer.type == 'AdamW'
    assert optim.optimizer.lr == exp['lr'] and optim.optimizer.weight_decay == exp['wd']
    assert cfg.train_dataloader.batch_size == exp['batch']
    warmup, main = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.end == exp['warmup'] and not warmup.by_epoch
    if cfg.default_scope == 'mmdet':
        assert backbone.get('stem_norm_cfg', dict(type='BN', requires_grad=False)) == dict(type='BN',
                                                                                      requires_grad=False) \
            or backbone.type == 'mmdualvit.Sequencer2D'
        assert warmup.start_factor == 0.001
        assert cfg.train_cfg.max_epochs == exp['epochs']
        assert main.type == 'MultiStepLR' and main.milestones == exp['milestones'] and main.gamma == 0.1
        keys = sorted(optim.get('paramwise_cfg', {}).get('custom_keys', {}))
        assert keys == sorted(exp['paramwise'] or [])
        assert all(v.decay_mult == 0 for v in optim.get('paramwise_cfg', {}).get('custom_keys', {}).values())
        assert cfg.model.neck.in_channels == exp['dims']
        assert cfg.model.data_preprocessor.pad_size_divisor == 32 and cfg.model.data_preprocessor.bgr_to_rgb
        if name.startswith('retinanet'):
            neck = cfg.model.neck
            assert (neck.start_level, neck.add_extra_convs, neck.num_outs) == (1, 'on_input', 5)
        else:
            assert cfg.model.neck.get('start_level', 0) == 0 and cfg.model.neck.num_outs == 5
    else:
        assert cfg.train_cfg.max_iters == exp['iters'] and cfg.train_cfg.val_interval == 16000
        assert cfg.default_hooks.checkpoint.interval == 16000
        assert warmup.start_factor == 1e-6
        assert main.type == 'PolyLR' and main.power == 1.0 and main.eta_min == 0 and main.end == exp['iters']
        assert optim.optimizer.betas == (0.9, 0.999)
        assert optim.paramwise_cfg.custom_keys.norm.decay_mult == 0
        head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
        assert head.type == 'UPerHead' and head.in_channels == exp['dims'] and head.channels == 512
        assert head.pool_scales == (1, 2, 3, 6) and head.dropout_ratio == 0.1 and head.num_classes == 150
        assert aux.type == 'FCNHead' and aux.in_index == 2 and aux.in_channels == exp['dims'][2]
        assert aux.channels == 256 and aux.loss_decode.loss_weight == 0.4
        assert cfg.crop_size == (512, 512)


DROP_IN = r'''
import sys
from mmengine.config import Config
from mmengine.registry import init_default_scope
for path in sys.argv[1:]:
    cfg = Config.fromfile(path)  # its custom_imports bring mmdualvit in
    assert 'mmdualvit' in sys.modules
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    print('built', path.rsplit('/', 1)[-1], type(model.backbone).__name__)
'''


@pytest.mark.slow
def test_configs_work_from_outside_the_repo(tmp_path):
    """Users copy our configs into their mmdet/mmseg project: nothing imported beforehand but custom_imports."""
    target = tmp_path / 'my_project' / 'configs'
    shutil.copytree(REPO / 'configs', target)
    paths = [str(target / p.name) for p in REAL]
    proc = subprocess.run([sys.executable, '-c', DROP_IN, *paths], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('built ') == len(REAL)
