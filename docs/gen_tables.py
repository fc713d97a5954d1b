"""Write the generated tables of README.md and docs/configs.md from configs/metafile.yml and configs/dropin.yml.

    python docs/gen_tables.py           # rewrite the generated blocks in place
    python docs/gen_tables.py --check   # exit 1 and name the blocks that differ from what the data files give

A generated block sits between ``<!-- NAME: ... -->`` and ``<!-- end NAME -->`` lines; everything else in the
Markdown files is left alone. Needs only PyYAML, so it runs outside the project's venv too.
"""
import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
METAFILE = ROOT / 'configs' / 'metafile.yml'
DROPIN = ROOT / 'configs' / 'dropin.yml'

# Short forms for the README table; a task or metric missing here is an error, not a silent blank.
TASKS = {'Object Detection': 'detection', 'Instance Segmentation': 'instance seg.',
         'Semantic Segmentation': 'semantic seg.', 'Image Classification': 'classification'}
METRICS = {'box AP': 'AP^b', 'mask AP': 'AP^m', 'mIoU': 'mIoU', 'Top 1 Accuracy': 'top-1', 'Top 5 Accuracy': 'top-5'}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding='utf-8'))


def model_table(metafile: dict) -> List[str]:
    """README's model table: one row per metafile model, in the metafile's order."""
    lines = ['| config | task | paper result (authors\') | params | GMACs |', '|---|---|---|---|---|']
    for model in metafile['Models']:
        config = model['Config']
        results = model['Results']
        datasets = {r['Dataset'] for r in results}
        if len(datasets) != 1:
            raise ValueError(f"{model['Name']}: expected one dataset in Results, got {sorted(datasets)}")
        task = f"{datasets.pop()} {' + '.join(TASKS[r['Task']] for r in results)}"
        scores = [f'{value} {METRICS[name]}' for r in results for name, value in (r.get('Metrics') or {}).items()]
        meta = model['Metadata']
        lines.append(f"| [{Path(config).name}]({config}) | {task} | {' / '.join(scores) or '–'} | "
                     f"{meta['Parameters'] / 1e6:.2f}M | {meta['FLOPs'] / 1e9:.1f} |")
    return lines


def dropin_table(dropin: dict) -> List[str]:
    """docs/configs.md's table of the files to copy per family."""
    lines = ['| family | files to copy (from `configs/`) |', '|---|---|']
    for row in dropin['Rows']:
        lines.append(f"| {row['Family']} | {' '.join(f'`{name}`' for name in row['Files'])} |")
    return lines


def dropin_names(dropin: dict) -> List[str]:
    """docs/configs.md's list of every mmdualvit name in the configs."""
    lines = []
    for group in dropin['Names']:
        note = f" ({group['Note']})" if group.get('Note') else ''
        lines.append(f"- {group['Where']}: {', '.join(f'`{name}`' for name in group['Names'])}{note}")
    return lines


# (file, block name, what the block holds)
BLOCKS: List[Tuple[str, str, Callable[[], List[str]]]] = [
    ('README.md', 'model-table', lambda: model_table(load(METAFILE))),
    ('docs/configs.md', 'dropin-table', lambda: dropin_table(load(DROPIN))),
    ('docs/configs.md', 'dropin-names', lambda: dropin_names(load(DROPIN))),
]


def block_span(lines: List[str], name: str, path: str) -> Tuple[int, int]:
    """Indices of the first and last line strictly inside the block ``name``."""
    starts = [i for i, line in enumerate(lines) if line.startswith(f'<!-- {name}:')]
    ends = [i for i, line in enumerate(lines) if line.strip() == f'<!-- end {name} -->']
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f'{path}: expected one "<!-- {name}: ... -->" line followed by one "<!-- end {name} -->" '
                         f'line, found {len(starts)} and {len(ends)}')
    return starts[0] + 1, ends[0]


def current_block(path: str, name: str) -> List[str]:
    """The lines now inside block ``name`` of ``path`` (relative to the repository root)."""
    lines = (ROOT / path).read_text(encoding='utf-8').splitlines()
    start, end = block_span(lines, name, path)
    return lines[start:end]


def write_block(path: str, name: str, body: List[str]) -> None:
    text = (ROOT / path).read_text(encoding='utf-8')
    lines = text.splitlines()
    start, end = block_span(lines, name, path)
    lines[start:end] = body
    (ROOT / path).write_text('\n'.join(lines) + ('\n' if text.endswith('\n') else ''), encoding='utf-8')


def generated() -> Dict[Tuple[str, str], List[str]]:
    """``{(file, block): lines}`` as the data files give them."""
    return {(path, name): make() for path, name, make in BLOCKS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--check', action='store_true', help='only compare; exit 1 if a block is out of date')
    args = parser.parse_args()
    stale = []
    for (path, name), body in generated().items():
        if current_block(path, name) != body:
            stale.append(f'{path} ({name})')
            if not args.check:
                write_block(path, name, body)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python docs/gen_tables.py", file=sys.stderr)
        return 1
    print(('rewrote: ' + ', '.join(stale)) if stale else 'all generated blocks are up to date')
    return 0


if __name__ == '__main__':
    sys.exit(main())
