"""Every relative link and anchor in the docs resolves: README.md, CONTRIBUTING.md, docs/*.md.

A link's file must exist inside the checkout, and a ``#fragment`` must name a heading of the
target page as GitHub ids it, or an explicit ``<a name=...>`` / ``id=...`` anchor. GitHub's
rule (github-slugger): take the heading's text as rendered, lowercase it, drop every character
that is not a letter, mark, digit, connector (``_``), hyphen or space, turn each space into a
hyphen; a repeated id gets ``-1``, ``-2``... Headings and links inside fenced code blocks or code
spans don't count. External links (``http:``, ``https:``, ``mailto:``) are not checked: no network.
"""
from __future__ import annotations

import html
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

from helpers import ROOT

FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
CODE_SPAN = re.compile(r"(`+)((?:(?!\n\s*\n).)+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REF_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\[[^\]]*\]")
REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_LINK = re.compile(r"<[a-zA-Z][^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']")
HTML_ANCHOR = re.compile(r"<[a-zA-Z][^>]*?\b(?:name|id)\s*=\s*[\"']([^\"']+)[\"']")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
LINE_ANCHOR = re.compile(r"^L\d+(-L\d+)?$")  # GitHub's line anchors on a source file


def doc_files(root: Path) -> list[Path]:
    """The pages whose links are checked."""
    return [p for p in (root / "README.md", root / "CONTRIBUTING.md", root / "ablations" / "README.md")
            if p.is_file()] + sorted((root / "docs").glob("*.md"))


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            fence = m.group(1)
        elif fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2).strip():
                fence = None
        else:
            out.append((number, line))
    return out


def _plain(text: str) -> str:
    """Markdown inline text as GitHub renders it: code verbatim, links as their text, no markup."""
    parts = []
    for i, piece in enumerate(CODE_SPAN.split(text)):
        kind = i % 3  # split yields: text, backtick run, code, text, ...
        if kind == 2:  # code: one space each side is padding (CommonMark), the rest is kept
            parts.append(piece[1:-1] if piece.startswith(" ") and piece.endswith(" ") and piece.strip() else piece)
        elif kind == 0:
            piece = REF_LINK.sub(r"\1", LINK.sub(r"\1", piece))
            piece = re.sub(r"<[^>]+>", "", piece)
            piece = re.sub(r"\*+|(?<!\w)_+|_+(?!\w)", "", piece)  # emphasis; snake_case keeps its _
            piece = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", piece)
            parts.append(html.unescape(piece))
    return "".join(parts).strip()


def _keep(ch: str) -> bool:
    return ch in "- " or unicodedata.category(ch)[0] in "LM" or unicodedata.category(ch) in ("Nd", "Nl", "Pc")


class Slugger:
    """GitHub's heading ids for one page, repeats numbered as github-slugger numbers them."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def slug(self, heading: str) -> str:
        base = "".join(ch for ch in heading.lower() if _keep(ch)).replace(" ", "-")
        slug = base
        while slug in self.seen:
            self.seen[base] += 1
            slug = f"{base}-{self.seen[base]}"
        self.seen[slug] = 0
        return slug


def _code_free(line: str) -> str:
    return CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), line)  # keeps line numbers


def anchors(path: Path) -> set[str]:
    """Every id a link may point at on a page: its headings' slugs and explicit anchors."""
    slugger, found = Slugger(), set()
    lines = prose_lines(path.read_text(encoding="utf-8"))
    previous = None  # the last paragraph line, for a setext underline
    for number, line in lines:
        atx, setext = ATX.match(line), SETEXT.match(line)
        if atx:
            found.add(slugger.slug(_plain(atx.group(2) or "")))
            previous = None
            continue
        if setext and previous is not None and previous[0] == number - 1:
            found.add(slugger.slug(_plain(previous[1])))
            previous = None
            continue
        found.update(HTML_ANCHOR.findall(_code_free(line)))
        paragraph = line.strip() and not re.match(r"^\s*([-*+>|]|\d+[.)])(\s|$)", line) and not line.startswith("    ")
        previous = (number, line) if paragraph else None
    return found


def _paragraphs(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(first line number, text) of each run of adjacent non-blank lines: a link's text may wrap."""
    out: list[tuple[int, list[str]]] = []
    for number, line in lines:
        if not line.strip():
            continue
        if out and out[-1][0] + len(out[-1][1]) == number:
            out[-1][1].append(line)
        else:
            out.append((number, [line]))
    return [(number, "\n".join(block)) for number, block in out]


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link on a page, outside code."""
    out = []
    for first, block in _paragraphs(prose_lines(path.read_text(encoding="utf-8"))):
        text = _code_free(block)
        found = [(m.start(), m.group(2)) for m in LINK.finditer(text)]
        found += [(m.start(), m.group(1)) for m in HTML_LINK.finditer(text)]
        found += [(m.start(), m.group(1)) for m in re.finditer(REF_DEF.pattern, text, re.M)]
        for start, target in sorted(found):
            out.append((first + text.count("\n", 0, start), target[1:-1] if target.startswith("<") else target))
    return out


def broken_links(root: Path) -> list[str]:
    """One line per link of ``doc_files(root)`` that does not resolve."""
    root = root.resolve()
    problems, cache = [], {}
    for page in doc_files(root):
        for number, target in links(page):
            where = f"{page.relative_to(root)}:{number}: {target}"
            if SCHEME.match(target):
                continue
            path, _, fragment = target.partition("#")
            path = unquote(path)
            dest = page if not path else (root / path.lstrip("/") if path.startswith("/") else page.parent / path)
            dest = dest.resolve()
            if not dest.is_relative_to(root):
                problems.append(f"{where}: points outside the repository")
                continue
            if not dest.exists():
                problems.append(f"{where}: no such file")
                continue
            if not fragment:
                continue
            if dest.is_dir():
                dest = dest / "README.md"
            if dest.suffix != ".md":
                if not LINE_ANCHOR.match(fragment):
                    problems.append(f"{where}: an anchor on a file that is not Markdown")
                continue
            if dest not in cache:
                cache[dest] = anchors(dest) if dest.is_file() else set()
            if unquote(fragment) not in cache[dest]:
                problems.append(f"{where}: no heading or anchor '#{fragment}' in {dest.relative_to(root)}")
    return problems


def test_every_link_and_anchor_resolves():
    problems = broken_links(ROOT)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_pages_are_there():
    names = {p.name for p in doc_files(ROOT)}
    for topic in ("protocols", "results", "reliability", "tracking", "gpu", "models", "reports", "evaluation",
                  "predict", "refereeing", "ablations", "datasets", "tuning", "clusters", "speed"):
        assert f"{topic}.md" in names
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150


def test_slugs_follow_github():
    s = Slugger()
    assert [s.slug(h) for h in ("foo", "foo", "foo-1", "foo")] == ["foo", "foo-1", "foo-1-1", "foo-2"]
    s = Slugger()
    assert s.slug("Привет non-latin 你好") == "привет-non-latin-你好"
    assert s.slug("😄 emoji") == "-emoji"
    assert s.slug(_plain("Set up and go (fresh machine, Python >= 3.10)")) == "set-up-and-go-fresh-machine-python--310"
    assert s.slug(_plain("Overrides: `--set KEY=VALUE`")) == "overrides---set-keyvalue"
    assert s.slug(_plain("**Bold** _it_ and snake_case, [a link](x.md) \\#1")) == "bold-it-and-snake_case-a-link-1"
    assert s.slug(_plain("Using `bench predict` &amp; <em>export</em>")) == "using-bench-predict--export"


def test_a_broken_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# Page A\n\n## Twice\n\n## Twice\n\nSetext title\n------------\n\n<a name=\"here\"></a>\n\n"
        "```md\n## Only in code\n[in a fence](nowhere.md)\n```\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "# Top\n\n"
        "[ok](docs/a.md#twice-1) [ok](docs/a.md#setext-title) [ok](docs/a.md#here) [ok](#top) [ok](docs/)\n"
        "[external](https://example.org/nowhere#x) `[in code](nowhere.md)`\n"
        "[missing file](docs/b.md)\n"
        "[missing anchor](docs/a.md#twice-2)\n"
        "[fenced heading](docs/a.md#only-in-code)\n"
        "[outside](../elsewhere.md)\n"
        "[self](#nothing)\n"
        "[a text that\nwraps](docs/c.md)\n", encoding="utf-8")
    problems = broken_links(tmp_path)
    targets = [p.split(": ")[1] for p in problems]
    assert targets == ["docs/b.md", "docs/a.md#twice-2", "docs/a.md#only-in-code", "../elsewhere.md", "#nothing",
                       "docs/c.md"], problems
    assert "no such file" in problems[0] and "outside the repository" in problems[3]
    assert problems[-1].startswith("README.md:10:")  # the line the link starts on
