"""configs/metafile.yml, the OpenMMLab model index: complete, readable by OpenMMLab's tooling, true to the configs, its
parameters and FLOPs what tools/analysis/get_flops.py measures; the generated Markdown tables equal what it gives."""
import copy
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from mmengine.config import Config

from tests.utils import REPO, load_module

METAFILE = REPO / 'configs' / 'metafile.yml'
META = yaml.safe_load(METAFILE.read_text(encoding='utf-8'))
MODELS = META['Models']
SCOPE_DATA = {'mmdet': 'COCO', 'mmseg': 'ADE20K', 'mmpretrain': 'ImageNet-1k'}
BACKBONES = {'Dual-ViT': 'mmdualvit.DualViT', 'Sequencer2D': 'mmdualvit.Sequencer2D'}
GPUS = 8  # every official run used 8 GPUs; the metafile's Batch Size is the total


def model_id(model) -> str:
    return model['Name']


def model_key(cfg: Config) -> str:
    """The model a config builds, less what changes neither parameters nor FLOPs (pretrained path, drop-path)."""
    model = copy.deepcopy(cfg.model.to_dict())
    model['backbone'].pop('init_cfg', None)
    model['backbone'].pop('drop_path_rate', None)
    return json.dumps(model, sort_keys=True, default=str)


# Entries with the same architecture list and input size claim the same figures (e.g. a 1x config and its 3x
# version); test_same_architecture_means_same_model proves they build the same model, so one measurement covers them.
GROUPS = {}
for _model in MODELS:
    GROUPS.setdefault((tuple(_model['Metadata']['Architecture']), tuple(_model['Metadata']['Input Size'])),
                      []).append(_model)


def test_model_index_reads_with_openmmlab_tooling():
    """model-index.yml imports the metafile, and the model-index package that mim uses reads it with no errors."""
    import modelindex
    index = modelindex.load(str(REPO / 'model-index.yml'))
    assert index.check(silent=True) == []
    assert [m.name for m in index.models] == [m['Name'] for m in MODELS]
    assert yaml.safe_load((REPO / 'model-index.yml').read_text())['Import'] == ['configs/metafile.yml']


def test_every_config_has_exactly_one_entry():
    """Every config under configs/ except _base_/, toy/ and peers/ (all subfolders) is a model of the index."""
    on_disk = sorted(str(p.relative_to(REPO)) for p in (REPO / 'configs').glob('*.py'))
    listed = [m['Config'] for m in MODELS]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == on_disk
    assert all(m['Name'] == Path(m['Config']).stem for m in MODELS)


@pytest.mark.parametrize('model', MODELS, ids=model_id)
def test_entry_fields(model):
    """The OpenMMLab fields, the figures stored at the README table's precision, and the results marked as the
    papers' wherever there are any."""
    collections = {c['Name'] for c in META['Collections']}
    assert model['In Collection'] in collections
    meta = model['Metadata']
    assert {'Training Data', 'Architecture', 'Parameters', 'FLOPs', 'Input Size'} <= set(meta)
    assert meta['Architecture'][0].startswith(model['In Collection'] + '-')
    assert isinstance(meta['Parameters'], int) and meta['Parameters'] > 0 and meta['Parameters'] % 10_000 == 0
    assert isinstance(meta['FLOPs'], int) and meta['FLOPs'] > 0 and meta['FLOPs'] % 100_000_000 == 0
    assert len(meta['Input Size']) == 2 and all(isinstance(x, int) for x in meta['Input Size'])
    results = model['Results']
    assert results and all(set(r) == {'Task', 'Dataset', 'Metrics'} for r in results)
    assert {r['Dataset'] for r in results} == {meta['Training Data']}
    published = any(r['Metrics'] for r in results)
    assert ('Results Source' in model) == published
    if published:
        source = model['Results Source']
        assert source.startswith('paper') and 'not reproduced with mmdualvit' in source


@pytest.mark.parametrize('model', MODELS, ids=model_id)
def test_entry_config_loads_and_matches_its_metadata(model):
    cfg = Config.fromfile(str(REPO / model['Config']))
    meta = model['Metadata']
    assert SCOPE_DATA[cfg.default_scope] == meta['Training Data']
    backbone = cfg.model.backbone
    assert backbone.type == BACKBONES[model['In Collection']]
    assert meta['Architecture'][0] == f"{model['In Collection']}-{backbone.arch.upper()}"
    if 'Epochs' in meta:
        assert cfg.train_cfg.max_epochs == meta['Epochs']
    if 'Iterations' in meta:
        assert cfg.train_cfg.max_iters == meta['Iterations']
    if 'Batch Size' in meta:
        assert cfg.train_dataloader.batch_size * GPUS == meta['Batch Size']


@pytest.mark.parametrize('group', GROUPS.values(), ids=lambda group: group[0]['Name'])
def test_same_architecture_means_same_model(group):
    keys = {model_key(Config.fromfile(str(REPO / m['Config']))) for m in group}
    assert len(keys) == 1, [m['Name'] for m in group]
    assert len({(m['Metadata']['Parameters'], m['Metadata']['FLOPs']) for m in group}) == 1


@pytest.mark.slow
@pytest.mark.parametrize('group', GROUPS.values(), ids=lambda group: group[0]['Name'])
def test_params_and_flops_are_what_get_flops_measures(group, monkeypatch, capsys):
    """tools/analysis/get_flops.py run on the group's first config, compared at the README table's rounding."""
    model = group[0]
    height, width = model['Metadata']['Input Size']
    get_flops = load_module(REPO / 'tools' / 'analysis' / 'get_flops.py', 'get_flops_tool')
    monkeypatch.setattr(sys, 'argv', ['get_flops.py', str(REPO / model['Config']), '--shape', str(height), str(width)])
    get_flops.main()
    printed = capsys.readouterr().out
    measured = re.search(r'([0-9.]+)M parameters, ([0-9.]+) GMACs', printed)
    assert measured, printed
    stored = (f"{model['Metadata']['Parameters'] / 1e6:.2f}", f"{model['Metadata']['FLOPs'] / 1e9:.1f}")
    assert measured.groups() == stored, f"{model['Name']}: get_flops.py printed {printed.strip()!r}"


def test_generated_markdown_blocks_are_up_to_date():
    """README's model table (from the metafile) and docs/configs.md's drop-in table and name list (from
    configs/dropin.yml) are exactly what docs/gen_tables.py writes."""
    gen_tables = load_module(REPO / 'docs' / 'gen_tables.py', 'gen_tables')
    for (path, name), body in gen_tables.generated().items():
        assert gen_tables.current_block(path, name) == body, f'{path} ({name}) is stale: run python docs/gen_tables.py'
    readme_rows = gen_tables.current_block('README.md', 'model-table')[2:]
    listed = [re.match(r'\| \[([^\]]+)\]', row).group(1) for row in readme_rows]
    assert listed == [Path(m['Config']).name for m in MODELS]
