"""Every config under configs/ loads, builds and runs; the real configs carry the official training settings."""
import re
import shutil
import sys

import pytest
import torch
from mmengine.config import Config

from mmdualvit.building import build_from_config, synthetic_batch
from tests.utils import REPO, run_tool

# ImageNet classifier configs (imagenet_*.py) are covered by tests/test_models/test_classifiers.py.
CONFIGS = sorted(p for p in (REPO / 'configs').rglob('*.py')
                 if '_base_' not in p.parts and not p.name.startswith('imagenet_'))
REAL = [p for p in CONFIGS if p.parent.name == 'configs']


def config_id(path):
    return str(path.relative_to(REPO / 'configs'))


def _family_and_rank(path):
    """('maskrcnn_dualvit_coco.py', rank): configs of one family differ only in backbone size and schedule; the
    1x S config ranks first."""
    size = re.search(r'_([smbl])(_3x)?_', path.name)
    return re.sub(r'_[smbl](_3x)?_', '_', path.name), (bool(size.group(2)), 'smbl'.index(size.group(1)))


_FAMILIES = {}
for _path in REAL:
    _family, _rank = _family_and_rank(_path)
    _FAMILIES.setdefault(_family, []).append((_rank, _path))
# One full-size build per family; the other sizes keep their widths (what they change in the neck and heads) with at
# most two blocks per stage (both block kinds of every stage), which is what the build-train-predict test needs.
FULL_SIZE = {min(members)[1] for members in _FAMILIES.values()}


def narrowed_depths(cfg):
    """Cap the backbone's blocks per stage at two, keeping every other arch setting of the config."""
    from mmdualvit.models import DualViT, Sequencer2D
    zoo = {'mmdualvit.DualViT': DualViT.arch_zoo, 'mmdualvit.Sequencer2D': Sequencer2D.arch_zoo}
    backbone = cfg.model.backbone
    arch = dict(zoo[backbone.type][backbone.arch])
    arch['depths'] = [min(depth, 2) for depth in arch['depths']]
    backbone.arch = arch


def build_model(cfg):
    if cfg.default_scope == 'mmseg':
        cfg.model.data_preprocessor.size = (64, 96)  # the real configs pad to 512x512 crops; keep the test small
    model, _ = build_from_config(cfg)
    model.init_weights()
    return model


@pytest.mark.parametrize('path', CONFIGS, ids=config_id)
def test_config_builds_trains_and_predicts(path):
    cfg = Config.fromfile(str(path))
    if path in REAL and path not in FULL_SIZE:
        narrowed_depths(cfg)
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
    'retinanet_dualvit_s_3x_coco.py': dict(DET_3X, lr=1e-4, wd=0.05, arch='s', dpr=0.15, dims=[64, 128, 320, 448],
                                           batch=2),
}
# The other 3x systems (object_detection/configs/dualvit/*_3x_*.py at HEAD; batch from their first version).
S_3X = dict(DET_3X, lr=1e-4, wd=0.05, arch='s', dpr=0.15, dims=[64, 128, 320, 448])
EXPECTED.update({
    'cascade_mask_rcnn_dualvit_s_3x_coco.py': dict(S_3X, neck=(0, False, 5)),
    'atss_dualvit_s_3x_coco.py': dict(S_3X, neck=(1, 'on_output', 5)),
    'gfl_dualvit_s_3x_coco.py': dict(S_3X, neck=(1, 'on_output', 5)),
    'sparse_rcnn_dualvit_s_3x_coco.py': dict(S_3X, lr=0.000025 / 1.4, wd=1e-4, paramwise=None, loss_scale=None,
                                             clip=dict(max_norm=1, norm_type=2), neck=(0, 'on_input', 4)),
})
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
    assert backbone.init_cfg.type == 'Pretrained'
    if backbone.type == 'mmdualvit.Sequencer2D':  # the authors' release (Dual-ViT's weights are on Baidu Pan only)
        assert backbone.init_cfg.checkpoint == ('https://github.com/okojoalg/sequencer/releases/download/weights/'
                                                f'sequencer2d_{exp["arch"]}.pth')
    else:
        assert backbone.init_cfg.checkpoint == f'checkpoints/dualvit_{exp["arch"]}.pth'
    assert cfg.custom_imports.imports == ['mmdualvit'] and not cfg.custom_imports.allow_failed_imports
    assert cfg.runner_type == 'mmdualvit.StrictRunner' and 'strict_load' not in cfg
    assert cfg.default_hooks.checkpoint.type == 'mmdualvit.PortableCheckpointHook'
    optim = cfg.optim_wrapper
    if exp['loss_scale'] is None:  # trained in fp32
        assert optim.type == 'OptimWrapper' and 'loss_scale' not in optim
    else:
        assert optim.type == 'AmpOptimWrapper' and optim.loss_scale == exp['loss_scale']
    assert optim.get('clip_grad') == exp.get('clip')
    assert optim.optimizer.type == 'AdamW'
    assert optim.optimizer.lr == exp['lr'] and optim.optimizer.weight_decay == exp['wd']
    assert cfg.train_dataloader.batch_size == exp['batch']
    warmup, main = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.end == exp['warmup'] and not warmup.by_epoch
    if cfg.default_scope == 'mmdet':
        frozen_bn = dict(type='BN', requires_grad=False)
        assert backbone.get('stem_norm_cfg', frozen_bn) == frozen_bn or backbone.type == 'mmdualvit.Sequencer2D'
        assert warmup.start_factor == 0.001
        assert cfg.train_cfg.max_epochs == exp['epochs']
        assert main.type == 'MultiStepLR' and main.milestones == exp['milestones'] and main.gamma == 0.1
        keys = sorted(optim.get('paramwise_cfg', {}).get('custom_keys', {}))
        assert keys == sorted(exp['paramwise'] or [])
        assert all(v.decay_mult == 0 for v in optim.get('paramwise_cfg', {}).get('custom_keys', {}).values())
        assert cfg.model.neck.in_channels == exp['dims']
        assert cfg.model.data_preprocessor.pad_size_divisor == 32 and cfg.model.data_preprocessor.bgr_to_rgb
        neck = cfg.model.neck
        if 'neck' in exp:
            assert (neck.get('start_level', 0), neck.get('add_extra_convs', False), neck.num_outs) == exp['neck']
        elif name.startswith('retinanet'):
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


THREE_X = sorted(name for name in EXPECTED if '_3x_' in name)


@pytest.mark.parametrize('name', THREE_X)
def test_3x_configs_share_the_official_multiscale_crop_recipe(name):
    """Every 3x config trains with the one pipeline/schedule of configs/_base_/dualvit_3x_coco.py: DETR-style
    multi-scale + crop (mmdet 2's AutoAugment of the official files), 36 epochs with steps 27/33."""
    cfg = Config.fromfile(str(REPO / 'configs' / name))
    scales = [(480 + 32 * i, 1333) for i in range(11)]
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert pipeline == cfg.train_pipeline
    assert [t.type for t in pipeline] == ['LoadImageFromFile', 'LoadAnnotations', 'RandomFlip', 'RandomChoice',
                                          'PackDetInputs']
    assert pipeline[1].with_bbox and pipeline[1].get('with_mask', False) == ('mask_rcnn' in name or 'maskrcnn' in name)
    assert pipeline[2].prob == 0.5
    plain, crop = pipeline[3].transforms
    assert len(plain) == 1 and plain[0].type == 'RandomChoiceResize' and plain[0].keep_ratio
    assert [tuple(x) for x in plain[0].scales] == scales
    assert [t.type for t in crop] == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
    assert [tuple(x) for x in crop[0].scales] == [(400, 1333), (500, 1333), (600, 1333)]
    assert crop[1].crop_type == 'absolute_range' and tuple(crop[1].crop_size) == (384, 600)
    assert crop[1].allow_negative_crop and [tuple(x) for x in crop[2].scales] == scales
    assert cfg.get('find_unused_parameters', False) == (not name.startswith('sparse'))
    text = (REPO / 'configs' / name).read_text()
    assert './_base_/dualvit_3x_coco.py' in text and '(480, 1333)' not in text  # written once, in the shared base


def test_cascade_mask_rcnn_3x_heads():
    """Official: three 4conv1fc box heads with SyncBN, class-specific regression on decoded boxes, GIoU loss 10."""
    model = Config.fromfile(str(REPO / 'configs' / 'cascade_mask_rcnn_dualvit_s_3x_coco.py')).model
    assert model.type == 'CascadeRCNN' and model.roi_head.stage_loss_weights == [1, 0.5, 0.25]
    stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
    assert len(model.roi_head.bbox_head) == 3
    for head, std in zip(model.roi_head.bbox_head, stds):
        assert head.type == 'ConvFCBBoxHead' and (head.num_shared_convs, head.num_shared_fcs) == (4, 1)
        assert (head.conv_out_channels, head.fc_out_channels, head.num_classes) == (256, 1024, 80)
        assert head.bbox_coder.target_stds == std and not head.reg_class_agnostic and head.reg_decoded_bbox
        assert head.norm_cfg == dict(type='SyncBN', requires_grad=True)
        assert head.loss_bbox == dict(type='GIoULoss', loss_weight=10.0)
        assert head.loss_cls == dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)
    assert model.roi_head.mask_head.type == 'FCNMaskHead' and model.roi_head.mask_head.num_convs == 4
    assert [r.assigner.pos_iou_thr for r in model.train_cfg.rcnn] == [0.5, 0.6, 0.7]
    assert model.test_cfg.rpn.max_per_img == 1000 and model.test_cfg.rcnn.mask_thr_binary == 0.5


@pytest.mark.parametrize('name,head_type', [('atss', 'ATSSHead'), ('gfl', 'GFLHead')])
def test_atss_and_gfl_3x_heads(name, head_type):
    model = Config.fromfile(str(REPO / 'configs' / f'{name}_dualvit_s_3x_coco.py')).model
    head = model.bbox_head
    assert head.type == head_type and (head.stacked_convs, head.feat_channels, head.num_classes) == (4, 256, 80)
    anchors = head.anchor_generator
    assert (anchors.ratios, anchors.octave_base_scale, anchors.scales_per_octave) == ([1.0], 8, 1)
    assert anchors.strides == [8, 16, 32, 64, 128]
    assert head.loss_bbox == dict(type='GIoULoss', loss_weight=2.0)
    if name == 'atss':
        assert head.loss_cls == dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
        assert head.loss_centerness == dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)
        assert head.bbox_coder.target_stds == [0.1, 0.1, 0.2, 0.2]
    else:
        assert head.loss_cls == dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0)
        assert head.loss_dfl == dict(type='DistributionFocalLoss', loss_weight=0.25) and head.reg_max == 16
    assert model.train_cfg.assigner == dict(type='ATSSAssigner', topk=9)
    assert model.train_cfg.allowed_border == -1 and model.train_cfg.pos_weight == -1
    test = model.test_cfg
    assert (test.nms_pre, test.min_bbox_size, test.score_thr, test.max_per_img) == (1000, 0, 0.05, 100)
    assert test.nms == dict(type='nms', iou_threshold=0.6)


def test_sparse_rcnn_3x_heads():
    """Official: 300 learned proposals, six DIIHead stages, Hungarian assignment with focal/L1/GIoU costs."""
    model = Config.fromfile(str(REPO / 'configs' / 'sparse_rcnn_dualvit_s_3x_coco.py')).model
    assert model.type == 'SparseRCNN' and model.rpn_head.type == 'EmbeddingRPNHead'
    assert model.rpn_head.num_proposals == 300 and model.rpn_head.proposal_feature_channel == 256
    roi = model.roi_head
    assert roi.num_stages == 6 and roi.stage_loss_weights == [1] * 6 and len(roi.bbox_head) == 6
    assert roi.bbox_roi_extractor.roi_layer == dict(type='RoIAlign', output_size=7, sampling_ratio=2)
    for head in roi.bbox_head:
        assert head.type == 'DIIHead' and (head.num_heads, head.num_ffn_fcs, head.num_cls_fcs) == (8, 2, 1)
        assert (head.num_reg_fcs, head.feedforward_channels, head.dropout) == (3, 2048, 0.0)
        assert head.dynamic_conv_cfg.feat_channels == 64 and head.dynamic_conv_cfg.input_feat_shape == 7
        assert head.loss_bbox == dict(type='L1Loss', loss_weight=5.0)
        assert head.loss_iou == dict(type='GIoULoss', loss_weight=2.0)
        assert head.loss_cls == dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0)
        assert head.bbox_coder.target_stds == [0.5, 0.5, 1.0, 1.0] and not head.bbox_coder.clip_border
    for stage in model.train_cfg.rcnn:
        costs = {c.type: c.weight for c in stage.assigner.match_costs}
        assert stage.assigner.type == 'HungarianAssigner'
        assert costs == {'FocalLossCost': 2.0, 'BBoxL1Cost': 5.0, 'IoUCost': 2.0}
    assert model.test_cfg.rcnn.max_per_img == 300


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
    out = run_tool([sys.executable, '-c', DROP_IN, *paths], cwd=tmp_path).stdout
    assert len(re.findall(r'^built ', out, re.M)) == len(REAL), out[-3000:]


def test_sparse_rcnn_complexity_is_measurable():
    """get_flops/benchmark run the model in tensor mode: Sparse R-CNN needs its learned proposals initialised (the
    default Embedding init gives negative boxes) and ground truth to unpack."""
    from mmdualvit.analysis import model_complexity
    model, _ = build_from_config(str(REPO / 'configs' / 'sparse_rcnn_dualvit_s_3x_coco.py'))
    macs, params = model_complexity(model.eval(), (64, 96))
    assert macs > 0 and params == sum(p.numel() for p in model.parameters())
