"""The documentation points at things that exist: every relative Markdown link in README.md,
results/README.md and docs/*.md resolves to a file or folder of the checkout, and the README's
Layout section names only paths that exist (issue 20: the old Layout had gone stale)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows).
LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.IGNORECASE)  # http:, mailto:, #anchor


def relative_links(markdown: str) -> list[str]:
    """The relative link targets of a Markdown text, anchors dropped; code is not text."""
    prose = INLINE_CODE.sub("", FENCE.sub("", markdown))
    targets = (m.group(1) for m in LINK.finditer(prose))
    return [t.split("#")[0] for t in targets if not EXTERNAL.match(t)]


def broken_links(doc: Path) -> list[str]:
    """The relative links of ``doc`` whose target does not exist (resolved from its folder)."""
    return [t for t in relative_links(doc.read_text()) if not (doc.parent / t).exists()]


def layout_paths(readme: str) -> list[str]:
    """The paths the Layout section's code block names: the first word of each line (an
    indented line continues the description above it)."""
    section = readme.split("\n## Layout", 1)[1]
    block = FENCE.search(section)
    assert block, "the README's Layout section has no code block"
    lines = block.group(0).splitlines()[1:-1]  # inside the fences
    return [line.split()[0] for line in lines if line[:1].strip()]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    assert broken_links(doc) == []


def test_layout_names_only_existing_paths() -> None:
    paths = layout_paths((ROOT / "README.md").read_text())
    assert paths, "the README's Layout section names no paths"
    assert [p for p in paths if not (ROOT / p).exists()] == []


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    """The checker itself: links in code are ignored, external links and anchors skipped."""
    (tmp_path / "here.md").write_text("x")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](here.md#part) ![img](gone.png) [web](https://example.org) [top](#top)\n"
        '`[code](not-a-link.md)`\n```\n[fenced](nor-this.md)\n```\n[titled](missing.md "t")\n'
    )
    assert broken_links(doc) == ["gone.png", "missing.md"]
