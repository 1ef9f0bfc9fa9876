"""Every pointer into the documentation lands on something that exists.

Two kinds of pointer are checked, in the project's code, configuration, scripts, tests and docs:

- a section named in prose, in the one style the project uses: the file's path, a space, the
  heading in double quotes (README.md or docs/caching.md, then the quoted heading; the older forms
  with a bare README or a comma after the file are read too, so that they cannot hide a stale
  heading). In a list of decisions (DESIGN.md) the label that opens an item counts as a heading;
- a markdown link between the project's markdown files, ``[text](path)`` or
  ``[text](path#anchor)``, and an image: the file must exist and the anchor must be one of the
  target's headings, made into an anchor the way GitHub does.

A docs page named by path (docs/<page>.md) must exist. Each failure names the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where a pointer may be written: the code, its configuration and everything shipped beside it.
SCANNED = ("src", "conf", "scripts", "benchmarks", "experiments", "notebooks", "tests", "docs", ".ci")
SUFFIXES = {".py", ".md", ".yml", ".yaml", ".toml", ".sbatch", ".sh", ".ipynb", ""}
SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints"}

# The file, an optional comma, one space, then the heading in double quotes (which may be
# escaped, inside a Python string, and may run over a line break of a comment or docstring).
SECTION = re.compile(r'(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md|README)(,?)\s\\?"([^"\\]{1,200})\\?"')
DOCS_PAGE = re.compile(r"(?<![\w/.-])((?:docs|benchmarks)/[\w./-]*[\w-]\.md)\b")
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ITEM_LABEL = re.compile(r"^[-*]\s+(?:\*\*)?([^:*`]{1,60}?)(?:\*\*)?:\s")  # "- Caching: every ..."


def scanned_files() -> Iterator[Path]:
    yield ROOT / "README.md"
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and not SKIPPED_PARTS & set(path.parts):
                yield path


def markdown_files() -> list[Path]:
    return [path for path in scanned_files() if path.suffix == ".md"]


def outside_fences(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a markdown text, fenced code blocks left out."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield number, line


@cache
def headings(path: Path) -> tuple[str, ...]:
    """The headings of a markdown file, as written (inline markup kept), in order."""
    found = []
    for _, line in outside_fences(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            found.append(" ".join(match.group(2).split()))
    return tuple(found)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in headings(path):
        base = anchor(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return frozenset(out)


def resolve(name: str, source: Path) -> Path | None:
    """The markdown file a section pointer names: from the project root, else beside the file
    that points, else in docs/ (DESIGN.md, METHOD.md are cited without their folder)."""
    if name == "README":
        name = "README.md"
    for base in (ROOT, source.parent, ROOT / "docs"):
        if (base / name).is_file():
            return base / name
    return None


@cache
def sections(path: Path) -> frozenset[str]:
    """What a prose pointer may name in a file: its headings and the labels of its list items."""
    labels = {m.group(1) for _, line in outside_fences(path.read_text(encoding="utf-8"))
              if (m := ITEM_LABEL.match(line))}
    return frozenset({plain(h) for h in headings(path)} | {plain(label) for label in labels})


def where(path: Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}"


def plain(heading: str) -> str:
    """A heading as prose quotes it: comment markers of continued lines and markup dropped."""
    lines = [re.sub(r"^\s*(#|\*|//)?\s*", "", line) for line in heading.splitlines()]
    return " ".join(" ".join(lines).replace("`", "").split())


def section_pointers() -> Iterator[tuple[str, str, Path | None, str]]:
    """(where, file as written, the file, heading) of every section named in prose."""
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in SECTION.finditer(text):
            name, _, heading = match.groups()
            yield where(path, text, match.start()), name, resolve(name, path), plain(heading)


def test_every_section_named_in_prose_exists() -> None:
    problems = []
    for place, name, target, heading in section_pointers():
        if target is None:
            problems.append(f'{place}: {name} "{heading}": there is no file {name}')
        elif heading not in sections(target):
            problems.append(f'{place}: {name} "{heading}": {target.relative_to(ROOT)} has no such heading')
    assert not problems, "stale pointers to documentation sections:\n" + "\n".join(problems)


def test_section_pointers_keep_one_style() -> None:
    """The file as a path (README.md, docs/caching.md), a space, the quoted heading: no comma."""
    odd = [f'{place}: {name} "{heading}"' for place, name, _, heading in section_pointers()
           if name == "README" or not name.endswith(".md")]
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        odd += [where(path, text, m.start()) + f": {m.group(0)!r}" for m in SECTION.finditer(text) if m.group(2)]
    assert not odd, "write a section pointer as the file's path, a space, the quoted heading:\n" + "\n".join(odd)


def test_every_markdown_link_resolves() -> None:
    problems = []
    for path in markdown_files():
        for number, line in outside_fences(path.read_text(encoding="utf-8")):
            for match in LINK.finditer(re.sub(r"`[^`]*`", "", line)):  # not inside inline code
                target = match.group(1)
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                file_part, _, fragment = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                place = f"{path.relative_to(ROOT)}:{number}: {target}"
                if not linked.exists():
                    problems.append(f"{place}: no such file")
                elif fragment and linked.suffix == ".md" and fragment.lower() not in anchors(linked):
                    problems.append(f"{place}: no heading with the anchor #{fragment}")
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_named_exists() -> None:
    missing = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        missing += [f"{where(path, text, m.start())}: {m.group(1)}" for m in DOCS_PAGE.finditer(text)
                    if not (ROOT / m.group(1)).is_file()]
    assert not missing, "pages named but not there:\n" + "\n".join(missing)


def test_the_checks_see_what_they_check() -> None:
    """The patterns find the forms they are meant to find, so a green run means something."""
    assert anchor("The recipes that followed MaskDM, at 64 tokens") == "the-recipes-that-followed-maskdm-at-64-tokens"
    assert anchor("How noisy is one final fd_clf?") == "how-noisy-is-one-final-fd_clf"
    assert anchor("Compute accounting: token-blocks") == "compute-accounting-token-blocks"
    comment = '# a rerun saves it (docs/reliability.md "Disk and\n# folders").'
    assert [(m.group(1), plain(m.group(3))) for m in SECTION.finditer(comment)] == [
        ("docs/reliability.md", "Disk and folders")]
    escaped = 'x = "see docs/caching.md \\"What reruns\\"."'
    assert [m.group(3) for m in SECTION.finditer(escaped)] == ["What reruns"]
    old_style = "(README" + ', "Caching and reruns")'  # split, so this file holds no such pointer
    assert [m.group(2) for m in SECTION.finditer(old_style)] == [","]
    assert "Caching and reruns" in headings(ROOT / "docs" / "caching.md")
    assert {"Caching", "Data at scale"} <= sections(ROOT / "docs" / "DESIGN.md")
    assert sum(1 for _ in section_pointers()) > 10
