"""Drop-in use as docs/configs.md describes it: copy a row's config files into an empty project and run the installed
mmdet / mmseg packages' own tools and inference APIs on them; upstream visualisation under our pinned stack."""
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from mmengine.config import Config

from tests.utils import REPO, fast_train_options, run_tool

CONFIGS = REPO / 'configs'
DROPIN = CONFIGS / 'dropin.yml'  # the one list of files to copy per family (docs/configs.md is generated from it)


def dropin() -> dict:
    return yaml.safe_load(DROPIN.read_text(encoding='utf-8'))


def dropin_rows() -> dict:
    """``{family: [file, ...]}``: exactly the files docs/configs.md tells users to copy."""
    return {row['Family']: row['Files'] for row in dropin()['Rows']}


def copy_row(files, dest: Path) -> Path:
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CONFIGS / name, dest / name)
    return dest


def mmdualvit_names(value):
    """Every string in a loaded config that names something of ours (types, imports, file backends)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from mmdualvit_names(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from mmdualvit_names(item)
    elif isinstance(value, str) and value.startswith('mmdualvit'):
        yield value


def test_dropin_rows_are_self_contained_and_name_every_config_and_mmdualvit_name(tmp_path, monkeypatch):
    """Each row of configs/dropin.yml, copied alone into an empty folder, loads; together the rows list every config,
    and its list of mmdualvit names is exactly what the configs use."""
    rows = dropin_rows()
    listed = [name for files in rows.values() for name in files]
    on_disk = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob('*.py'))
    # Toy rows repeat their base (a real primitive) and 3x rows the shared _base_/ recipe: every config is listed,
    # and no other file is in two rows.
    assert sorted(set(listed)) == on_disk
    non_toy = [name for family, files in rows.items() if not family.startswith('toy') for name in files
               if not name.startswith('_base_/')]
    assert len(non_toy) == len(set(non_toy))

    used = set()
    for index, (family, files) in enumerate(rows.items()):
        project = copy_row(files, tmp_path / str(index))
        monkeypatch.chdir(project)  # relative paths must not reach back into the checkout
        for name in files:
            try:
                cfg = Config.fromfile(str(project / name))
            except Exception as error:  # name the row whose files are not self-contained
                raise AssertionError(f'{name} of drop-in row {family!r} does not load on its own: {error}') from error
            used.update(mmdualvit_names(cfg.to_dict()))
    listed_names = [name for group in dropin()['Names'] for name in group['Names']]
    assert len(listed_names) == len(set(listed_names))
    assert set(listed_names) == used


def test_mmseg_visualizer_draws_a_toy_sample(tmp_path):
    """mmseg's SegLocalVisualizer (what --show-dir and MMSegInferencer use) under our pinned OpenCV."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from mmseg.visualization import SegLocalVisualizer

    from mmdualvit.datasets import TOY_SEG_CLASSES, TOY_SEG_PALETTE, make_toy_ade
    info = make_toy_ade(tmp_path / 'ade', num_train=1, num_val=0)
    image = cv2.cvtColor(cv2.imread(str(Path(info['train']['img_dir']) / '000001.png')), cv2.COLOR_BGR2RGB)
    label = cv2.imread(str(Path(info['train']['ann_dir']) / '000001.png'), cv2.IMREAD_UNCHANGED)
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.from_numpy(label.astype(np.int64))[None])
    visualizer = SegLocalVisualizer(name='dropin_test', alpha=1.0)
    visualizer.dataset_meta = dict(classes=TOY_SEG_CLASSES, palette=TOY_SEG_PALETTE)
    out_file = tmp_path / 'vis.png'
    visualizer.add_datasample('toy', image, sample, draw_pred=False, out_file=str(out_file))
    drawn = cv2.cvtColor(cv2.imread(str(out_file)), cv2.COLOR_BGR2RGB)
    assert drawn.shape == image.shape
    # alpha=1: away from the class-name labels, every pixel shows its class's palette colour.
    for cls, colour in enumerate(TOY_SEG_PALETTE):
        if (label == cls).any():
            share = (drawn[label == cls] == colour).all(axis=1).mean()
            assert share > 0.5, (TOY_SEG_CLASSES[cls], share)


def upstream_mmseg() -> bool:
    """Whether mmseg is OpenMMLab's ``mmsegmentation`` (not the OneDL fork's ``onedl-mmsegmentation``)."""
    from mmdualvit.deps import installed
    return 'mmsegmentation' in installed('mmseg')


def test_our_seg_visualizer_draws_the_non_contiguous_images_mmseg_browse_dataset_passes(tmp_path):
    """mmseg's browse_dataset.py hands the visualizer a permuted, channel-reversed view; upstream mmseg 1.2's
    visualizer fails on it inside OpenCV (mmsegmentation#3405), mmdualvit.SegLocalVisualizer draws the same picture as
    for a contiguous copy (and, where mmseg's own draws it, as the OneDL fork's 1.4 does, the same as mmseg's)."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from mmseg.visualization import SegLocalVisualizer as MMSegVisualizer

    from mmdualvit.datasets import TOY_SEG_CLASSES, TOY_SEG_PALETTE, make_toy_ade
    from mmdualvit.registry import VISUALIZERS
    info = make_toy_ade(tmp_path / 'ade', num_train=1, num_val=0)
    bgr = cv2.imread(str(Path(info['train']['img_dir']) / '000001.png'))
    label = cv2.imread(str(Path(info['train']['ann_dir']) / '000001.png'), cv2.IMREAD_UNCHANGED)
    view = torch.from_numpy(bgr).permute(2, 0, 1).contiguous().permute(1, 2, 0).numpy()[..., [2, 1, 0]]
    assert not view.flags.c_contiguous  # what browse_dataset.py passes
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.from_numpy(label.astype(np.int64))[None])
    meta = dict(classes=TOY_SEG_CLASSES, palette=TOY_SEG_PALETTE)

    ours = VISUALIZERS.build(dict(type='mmdualvit.SegLocalVisualizer', name='ours_vis'))
    ours.dataset_meta = meta
    ours.add_datasample('toy', view, sample, draw_pred=False, out_file=str(tmp_path / 'view.png'))
    ours.add_datasample('toy', np.ascontiguousarray(view), sample, draw_pred=False, out_file=str(tmp_path / 'copy.png'))
    drawn = cv2.imread(str(tmp_path / 'view.png'))
    assert np.array_equal(drawn, cv2.imread(str(tmp_path / 'copy.png')))

    upstream = MMSegVisualizer(name='upstream_vis')
    upstream.dataset_meta = meta
    if upstream_mmseg():  # upstream 1.2.x: the bug our visualizer exists for
        with pytest.raises(cv2.error, match='Layout of the output array'):
            upstream.add_datasample('toy', view, sample, draw_pred=False)
    else:  # the OneDL fork's mmseg draws the view itself
        upstream.add_datasample('toy', view, sample, draw_pred=False, out_file=str(tmp_path / 'theirs.png'))
        assert np.array_equal(drawn, cv2.imread(str(tmp_path / 'theirs.png')))


# End to end through the installed packages' own tools (subprocesses: a minute or two on 2 CPU cores).

# docs/install.md's way to run mmseg's own tools where only the OneDL fork provides mmseg: import mmdualvit (which
# maps the `mmseg::` config scope to the fork) before the tool reads its config.
RUN_AFTER_IMPORT = ("import mmdualvit, runpy, sys; sys.argv = sys.argv[1:]; "
                    "runpy.run_path(sys.argv[0], run_name='__main__')")


def package_tool(package: str, *parts: str) -> list:
    """The command that runs the installed package's own tool ``parts`` (its ``.mim/tools`` copy)."""
    module = __import__(package)
    path = Path(module.__file__).parent / '.mim' / 'tools' / Path(*parts)
    assert path.is_file(), f'{package} ships no {path}'
    if package == 'mmseg' and not upstream_mmseg():
        return [sys.executable, '-c', RUN_AFTER_IMPORT, str(path)]
    return [sys.executable, str(path)]


def train_and_test(package, project: Path, config: str):
    """2 training iterations, then the package's test.py with --show-dir; returns (test log, checkpoint, show dir)."""
    run_tool([*package_tool(package, 'train.py'), config, '--work-dir', 'work', '--cfg-options',
              *fast_train_options(2)], cwd=project)
    assert (project / 'work' / 'iter_2.pth').is_file()
    log = run_tool([*package_tool(package, 'test.py'), config, 'work/iter_2.pth', '--work-dir', 'test',
                    '--show-dir', 'show'], cwd=project).stdout
    # mmdet puts --show-dir under work_dir/<timestamp>/, mmseg's visualizer writes it relative to the working directory.
    show = [p for p in [*(project / 'test').glob('*/show'), project / 'show'] if p.is_dir()]
    assert len(show) == 1, log[-2000:]
    return log, project / 'work' / 'iter_2.pth', show[0]


@pytest.mark.slow
def test_mmdet_tools_and_inferencer_on_the_toy_row(tmp_path, monkeypatch):
    project = copy_row(dropin_rows()['toy Mask R-CNN'], tmp_path)
    run_tool([sys.executable, '-m', 'mmdualvit.datasets.toy', 'coco', '--num-train', '4', '--num-val', '2'],
             cwd=project)
    config = 'toy/maskrcnn_dualvit_toy.py'
    log, checkpoint, show = train_and_test('mmdet', project, config)
    assert re.search(r'coco/bbox_mAP: [0-9.]+', log) and re.search(r'coco/segm_mAP: [0-9.]+', log)
    assert len(list(show.glob('*.png'))) == 2  # one picture per validation image

    from mmdet.apis import DetInferencer
    monkeypatch.chdir(project)
    inferencer = DetInferencer(model=config, weights=str(checkpoint), device='cpu', show_progress=False)
    result = inferencer(str(project / 'data/toy_coco/val/000001.png'), out_dir=str(project / 'infer'))
    prediction = result['predictions'][0]
    assert set(prediction) >= {'labels', 'scores', 'bboxes', 'masks'}
    assert all(label in (0, 1, 2) for label in prediction['labels'])
    assert (project / 'infer' / 'vis' / '000001.png').is_file()

    # mmdet's own dataset browser draws the toy annotations under the pinned OpenCV.
    run_tool([*package_tool('mmdet', 'analysis_tools', 'browse_dataset.py'), config, '--not-show',
              '--output-dir', 'browse'], cwd=project)
    assert len(list((project / 'browse').glob('*.png'))) == 4


@pytest.mark.slow
def test_mmseg_tools_and_inferencer_on_the_toy_row(tmp_path, monkeypatch):
    project = copy_row(dropin_rows()['toy UperNet'], tmp_path)
    run_tool([sys.executable, '-m', 'mmdualvit.datasets.toy', 'ade', '--num-train', '4', '--num-val', '3'],
             cwd=project)
    config = 'toy/upernet_dualvit_toy.py'
    log, checkpoint, show = train_and_test('mmseg', project, config)
    # mIoU over all four classes, background included (reduce_zero_label=False): a per-class row for each.
    for name in ('background', 'square', 'circle', 'triangle'):
        assert re.search(rf'\|\s*{name}\s*\|', log), log[-3000:]
    assert re.search(r'mIoU: [0-9.]+', log)
    # The config's visualization interval of 1 makes mmseg's test.py draw every image, not every 50th.
    assert len(list(show.rglob('*.png'))) == 3

    from mmseg.apis import MMSegInferencer
    monkeypatch.chdir(project)
    inferencer = MMSegInferencer(model=config, weights=str(checkpoint), device='cpu')
    result = inferencer(str(project / 'data/toy_ade/images/validation/000001.png'), out_dir=str(project / 'infer'))
    prediction = np.asarray(result['predictions'])
    assert prediction.shape == (128, 128) and set(np.unique(prediction).tolist()) <= {0, 1, 2, 3}
    assert list((project / 'infer').rglob('*.png'))

    # mmseg's own dataset browser, through the configs' mmdualvit.SegLocalVisualizer: one picture per train image.
    run_tool([*package_tool('mmseg', 'analysis_tools', 'browse_dataset.py'), config, '--not-show',
              '--output-dir', 'browse'], cwd=project)
    assert len(list((project / 'browse').glob('*.png'))) == 4
