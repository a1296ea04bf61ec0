"""The documentation's links hold: README.md, docs/*.md and the other Markdown pages of the repository.

Pure file reading, no services. A relative link must point at a file or folder that exists, and a ``#anchor`` (in
a link to a Markdown page, or within the page itself) must match a heading of its target under GitHub's slug rule.
README.md is the entry page and stays short: the long material lives in docs/.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: the pages whose links are checked: the entry page, its docs/ pages and the other hand-written Markdown pages
PAGES = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "powerbi").glob("*.md"),
     REPO / "streaming" / "README.md", REPO / "producers" / "data" / "README.md"]
)

README_MAX_LINES = 400

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines of a Markdown text outside fenced code blocks, as (1-based line number, line)."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text: markup dropped, lower case, punctuation other than ``-`` and ``_``
    dropped, each space a ``-`` (``"Chaos suite (`make chaos`)"`` -> ``"chaos-suite-make-chaos"``)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)     # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page has: its headings' slugs (a repeated slug gets ``-1``, ``-2``, ... as on GitHub) and
    explicit ``<a id=...>`` / ``<a name=...>`` anchors."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        out.update(_HTML_ANCHOR.findall(line))
        m = _HEADING.match(line)
        if not m:
            continue
        s = slug(m.group(2))
        if s in seen:
            seen[s] += 1
            out.add(f"{s}-{seen[s]}")
        else:
            seen[s] = 0
            out.add(s)
    return out


def links(page: Path) -> list[tuple[int, str]]:
    """The link targets of a page outside code (fenced blocks and code spans), as (line number, target)."""
    out = []
    for n, line in prose_lines(page.read_text(encoding="utf-8")):
        for m in _LINK.finditer(_CODE_SPAN.sub("", line)):
            out.append((n, m.group(1)))
    return out


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file is missing or whose ``#anchor`` matches no heading of the target,
    each as ``"<page>:<line>: <target>: <why>"``; empty when every link holds. External links are not checked."""
    problems = []
    for n, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):      # http:, https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(REPO)}:{n}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with the anchor #{anchor} in {dest.relative_to(REPO)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_an_existing_file_and_heading(page):
    assert page.exists(), page
    assert broken_links(page) == []


def test_readme_links_every_docs_page():
    linked = {(REPO / t.partition("#")[0]).resolve() for _, t in links(REPO / "README.md")}
    unlinked = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert unlinked == [], f"docs pages the README does not link: {unlinked}"


def test_readme_stays_an_entry_page():
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n < README_MAX_LINES, f"README.md has {n} lines; move the long material into docs/ (limit {README_MAX_LINES})"


def test_the_checker_finds_a_broken_file_link_and_a_broken_anchor(tmp_path, monkeypatch):
    """The check itself: a link to a missing file, or to a heading that is not there, is reported."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Page A\n\n## Chaos suite (`make chaos`)\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#chaos-suite-make-chaos) [ok](docs/a.md) [ok](#top) [web](https://example.com/x)\n"
        "`[code](nowhere.md)`\n\n# Top\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#not-a-heading) [code block](docs/a.md#not-a-heading-1)\n"
    )
    found = broken_links(page)
    assert [p.split(": ", 1)[1] for p in found] == [
        "docs/b.md: no such file docs/b.md",
        "docs/a.md#not-a-heading: no heading with the anchor #not-a-heading in docs/a.md",
        "docs/a.md#not-a-heading-1: no heading with the anchor #not-a-heading-1 in docs/a.md",
    ]


def test_slug_follows_githubs_rule():
    assert slug("The native platform: one supervisor, ClickHouse over HTTP") == (
        "the-native-platform-one-supervisor-clickhouse-over-http")
    assert slug("`make bench-bi`") == "make-bench-bi"
    assert slug("Which stack when") == "which-stack-when"
    assert slug("Scaling out (compose)") == "scaling-out-compose"
    assert slug("under_score and -dash") == "under_score-and--dash"
