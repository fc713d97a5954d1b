"""Every relative link and #anchor in README.md, CHANGELOG.md and docs/*.md resolves, with GitHub's heading anchors."""
import re
import unicodedata
from pathlib import Path
from typing import List, Tuple

import pytest

from tests.utils import REPO

PAGES = sorted([REPO / 'README.md', REPO / 'CHANGELOG.md', *(REPO / 'docs').glob('*.md')])

FENCE = re.compile(r'^\s*(```|~~~)')
LINK = re.compile(r'!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)')
HTML_COMMENT = re.compile(r'<!--.*?-->', re.S)
INLINE_CODE = re.compile(r'(`+)(.+?)\1')


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: the rendered text lowercased, characters other than letters, marks,
    numbers, connector punctuation (``_``), spaces and hyphens dropped, each space a hyphen."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)  # code keeps its text, loses its backticks
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)  # a link keeps its text
    text = re.sub(r'<[^>]+>', '', text)  # inline HTML
    kept = [c for c in text.strip().lower() if c in ' -' or unicodedata.category(c)[0] in 'LMN'
            or unicodedata.category(c) == 'Pc']
    return ''.join(kept).replace(' ', '-')


def prose_lines(text: str) -> List[Tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with HTML comments and inline code removed."""
    text = HTML_COMMENT.sub(lambda m: '\n' * m.group(0).count('\n'), text)
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, INLINE_CODE.sub('', line)))
    return lines


def anchors(path: Path) -> set:
    """Every heading anchor of a Markdown file, duplicates numbered as GitHub does (``name``, ``name-1`` ...)."""
    found, seen = set(), {}
    for _, line in prose_lines(path.read_text(encoding='utf-8')):
        match = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f'{slug}-{count}')
    return found


def links(path: Path) -> List[Tuple[int, str]]:
    return [(number, match.group(1)) for number, line in prose_lines(path.read_text(encoding='utf-8'))
            for match in LINK.finditer(line)]


@pytest.mark.parametrize('heading,slug', [
    ('Use it in an existing mmdet / mmseg environment', 'use-it-in-an-existing-mmdet--mmseg-environment'),
    ('Dual-ViT (`mmdualvit.DualViT`) and its pyramid', 'dual-vit-mmdualvitdualvit-and-its-pyramid'),
    ('800×1344 – forward, 2026-11-24', '8001344--forward-2026-11-24'),
    ('The 3x systems', 'the-3x-systems'),
    ('check_env.py: what it runs', 'check_envpy-what-it-runs'),
])
def test_github_slug_rule(heading, slug):
    assert github_slug(heading) == slug


def test_duplicate_headings_are_numbered(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text('# Notes\n\n```\n# not a heading\n```\n\n## Notes\n\n### Notes ##\n', encoding='utf-8')
    assert anchors(page) == {'notes', 'notes-1', 'notes-2'}


def test_pages_exist():
    assert REPO / 'README.md' in PAGES and len(PAGES) >= 7  # README, CHANGELOG and the five docs pages


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for number, target in links(page):
        if re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):  # https:, mailto: ...: not ours to check
            continue
        file_part, _, anchor = target.partition('#')
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(f'line {number}: {target} ({destination} does not exist)')
        elif anchor and destination.suffix == '.md' and anchor not in anchors(destination):
            broken.append(f'line {number}: {target} (no heading with anchor #{anchor} in {destination.name})')
        elif anchor and destination.suffix != '.md':
            broken.append(f'line {number}: {target} (an anchor into a file that is not Markdown)')
    assert not broken, f'{page.relative_to(REPO)}:\n' + '\n'.join(broken)
