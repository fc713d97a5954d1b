"""`make demo` end to end on a reduced schedule: the story fits its line budget, the table and pictures exist."""
import json
import re
import sys

import pytest
from PIL import Image

from tests.utils import REPO, run_tool

LINE_BUDGET = 60


@pytest.mark.slow
def test_demo_prints_a_short_story_with_one_table_and_writes_pictures(tmp_path):
    work = tmp_path / 'work'
    out = run_tool([sys.executable, REPO / 'tools' / 'demo.py', '--iters', '2', '--progress-every', '1', '--work-dir',
                    work, '--data-root', tmp_path / 'toy_coco'], cwd=tmp_path).stdout  # stdout and stderr
    lines = out.splitlines()
    assert len(lines) <= LINE_BUDGET, out
    # The Runner's config dump, environment report and pycocotools chatter go to the log file, not the screen.
    assert 'Config:' not in out and 'creating index' not in out and 'Average Precision' not in out
    runner_log = (work / 'runner.log').read_text()
    assert 'Config:' in runner_log
    # mmdet's CocoMetric(classwise=True) scored bbox and segm: its per-class tables are in the log.
    assert len(re.findall(r'\| category +\| mAP +\| mAP_50 ', runner_log)) == 2
    assert re.search(r'iter +1/2 +loss +\d+\.\d+', out) and re.search(r'iter +2/2 +loss', out)

    # One results table: bbox and segm columns, the three summary rows and one row per class, with values in [0, 1].
    assert out.count('COCO AP on the toy val split') == 1
    metrics = json.loads((work / 'metrics.json').read_text())
    for title, key in [('mAP (IoU .50:.95)', 'mAP'), ('AP50', 'AP50'), ('AP75', 'AP75'),
                       ('AP of square', 'square'), ('AP of circle', 'circle'), ('AP of triangle', 'triangle')]:
        row = re.search(rf'^   {re.escape(title)} +(\S+) +(\S+)$', out, re.M)
        assert row, f'no table row {title!r} in:\n{out}'
        bbox, segm = float(row.group(1)), float(row.group(2))
        assert bbox == pytest.approx(metrics['bbox'][key], abs=5e-4)
        assert segm == pytest.approx(metrics['segm'][key], abs=5e-4)
        assert 0.0 <= bbox <= 1.0 and 0.0 <= segm <= 1.0

    # One picture per val image, at the size the story states, and a contact sheet with all of them.
    stated = re.search(r'(\d+) pictures of (\d+)x(\d+) px', out)
    count, width, height = (int(v) for v in stated.groups())
    pictures = sorted((work / 'predictions').glob('*.png'))
    assert count == len(pictures) == 16
    for path in pictures:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.size == (width, height)
    with Image.open(work / 'contact_sheet.jpg') as sheet:
        sheet.load()
        # 4 columns of half-size pictures: wider than two of them, tall enough for 4 rows.
        assert sheet.width > 2 * width and sheet.height > 2 * height

    # `make demo` again: a fresh run into the same work dir replaces the previous demo (no used-work-dir refusal).
    again = run_tool([sys.executable, REPO / 'tools' / 'demo.py', '--iters', '1', '--progress-every', '1',
                      '--work-dir', work, '--data-root', tmp_path / 'toy_coco'], cwd=tmp_path).stdout
    assert re.search(r'iter +1/1 +loss +\d+\.\d+', again) and 'COCO AP on the toy val split' in again


def test_demo_pictures_show_the_predictions_and_are_the_same_on_every_run(tmp_path):
    """tools/demo.py's drawing (mmdet's DetLocalVisualizer on upscaled images, titles, a contact sheet), given the
    toy ground truth as predictions: the prediction panel shows them, and two drawings write identical files."""
    import runpy

    import torch
    from mmdet.models.utils import samplelist_boxtype2tensor
    from mmdet.registry import DATASETS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.structures import InstanceData

    from mmdualvit.datasets import make_toy_coco
    demo = runpy.run_path(str(REPO / 'tools' / 'demo.py'))  # its functions; main() does not run
    info = make_toy_coco(tmp_path / 'toy', num_train=1, num_val=2)
    init_default_scope('mmdet')
    dataset_cfg = Config.fromfile(str(demo['CONFIG'])).test_dataloader.dataset
    dataset = DATASETS.build(dict(dataset_cfg, data_root=str(tmp_path / 'toy') + '/'))

    def samples(score):
        batch = [dataset[i]['data_samples'] for i in range(len(dataset))]
        samplelist_boxtype2tensor(batch)  # boxes as tensors, as the data preprocessor leaves them
        for sample in batch:
            gt = sample.gt_instances
            sample.pred_instances = InstanceData(
                bboxes=gt.bboxes, labels=gt.labels, masks=torch.from_numpy(gt.masks.to_ndarray()).bool(),
                scores=torch.full((len(gt), ), score))
        return batch

    files = {}
    for run, score in [('first', 0.9), ('second', 0.9), ('below threshold', 0.1)]:
        sizes, sheet = demo['draw_pictures'](samples(score), list(info['classes']), str(tmp_path / run / 'predictions'))
        assert sizes == [(2 * 3 * 128, 3 * 128 + demo['TITLE_HEIGHT'])] * 2
        files[run] = [p.read_bytes() for p in sorted((tmp_path / run / 'predictions').glob('*.png'))]
        files[run].append((tmp_path / run / 'contact_sheet.jpg').read_bytes())
    assert len(files['first']) == 3 and files['first'] == files['second']
    # Predictions under the score threshold are not drawn: those pictures differ (in their right half only).
    assert all(a != b for a, b in zip(files['first'], files['below threshold']))
