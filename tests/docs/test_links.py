"""The README and the docs point at files and sections that exist: every relative link and its anchor."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def prose(path: Path) -> str:
    """The page without its fenced code blocks (their brackets are code, not links)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(path).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            name, n = anchor(match.group(1)), 0
            while (f"{name}-{n}" if n else name) in found:  # repeated headings get -1, -2, ...
                n += 1
            found.add(f"{name}-{n}" if n else name)
    return found


def relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path)) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_section_that_exist(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        file_part, _, fragment = target.partition("#")
        destination = (page.parent / unquote(file_part)).resolve() if file_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target}: no such section in {destination.relative_to(ROOT)}")
    assert not broken, broken


def test_the_anchors_are_githubs() -> None:
    assert anchor("Running `manage.py` commands") == "running-managepy-commands"
    assert anchor("Why a stream's own tick is hourly") == "why-a-streams-own-tick-is-hourly"
    assert anchor("Live pages: 2,000 on one web process") == "live-pages-2000-on-one-web-process"
    assert anchor("1. Every trade once") == "1-every-trade-once"


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](#nowhere) [file](missing.md)\n```\n[code](x.md)\n```\n")
    assert relative_links(page) == ["#title", "#nowhere", "missing.md"]
    assert anchors(page) == {"title"}


def test_every_docs_page_is_in_the_index() -> None:
    index = relative_links(ROOT / "docs" / "README.md")
    pages = [page.name for page in (ROOT / "docs").glob("*.md") if page.name != "README.md"]
    missing = [name for name in pages if name not in index]
    assert not missing, f"docs/README.md does not list {missing}"
