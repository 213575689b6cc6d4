"""Regenerate the embedded pretraining corpus, ``orchestrator/data/corpus/*.jsonl.gz``.

Source: the English prose of the Python 3.11 documentation (the reStructuredText sources that
Debian's ``python3.11-doc`` package installs under ``/usr/share/doc/python3.11/html/_sources``),
Copyright © 2001-2023 Python Software Foundation, distributed under the PSF License Version 2
(see ``orchestrator/data/corpus/SOURCE.txt``). Code samples, interactive sessions, tables and
markup are removed; each documentation page becomes one document ``{"text", "path"}``.

The pages are split into five files so a recipe can mix them like GPT-3's five sources
(``recipes/gpt3-mix.yaml``). The output is byte-for-byte reproducible for the same input:

    apt-get install python3.11-doc
    python scripts/build_embedded_corpus.py            # --docs DIR --out DIR to change paths
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

DEFAULT_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "orchestrator" / "data" / "corpus"

# output file → top-level folders of the docs (top-level pages such as the glossary go to "using")
GROUPS: dict[str, tuple[str, ...]] = {
    "library": ("library",),
    "whatsnew": ("whatsnew",),
    "tutorial": ("tutorial", "howto", "faq"),
    "reference": ("reference", "extending", "c-api"),
    "using": ("using", "installing", "install", "distutils", "distributing", "."),
}
SKIPPED_PAGES = {"contents.rst.txt", "license.rst.txt"}  # a table of contents; licence texts

# directives whose indented body is code, markup or metadata rather than prose
CODE_DIRECTIVES = {
    "index", "code-block", "sourcecode", "doctest", "testcode", "testoutput", "testsetup",
    "testcleanup", "productionlist", "toctree", "include", "literalinclude", "highlight", "module",
    "currentmodule", "moduleauthor", "sectionauthor", "tabularcolumns", "program", "contents",
    "image", "figure", "table", "list-table", "csv-table", "parsed-literal", "raw", "math",
    "only", "miscnews", "limited-api-list",
}
DIRECTIVE = re.compile(r"^\.\.\s+([\w:-]+)::")
UNDERLINE = re.compile(r"""^([=\-~^*#"'+`:._])\1{2,}\s*$""")
OPTION = re.compile(r"^:[\w-]+:(\s|$)")
BULLET = re.compile(r"^([*\-+•]|#\.|\d+\.|\(\d+\))\s+")
INLINE = [
    (re.compile(r":[\w:+-]+:`!?~?([^`<]*?)\s*<[^`>]*>`"), r"\1"),          # :ref:`text <target>`
    (re.compile(r":[\w:+-]+:`~(?:[\w.]*\.)?([^`.][^`]*)`"), r"\1"),          # :func:`~os.path.join`
    (re.compile(r":[\w:+-]+:`!?([^`]+)`"), r"\1"),                            # :func:`os.getcwd`
    (re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?"), r"\1"),                     # `text <url>`_
    (re.compile(r"``([^`]+)``"), r"\1"),                                    # ``literal``
    (re.compile(r"`([^`]+)`_{0,2}"), r"\1"),                                # `interpreted`
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),                                # **strong**
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])"), r"\1"),          # *emphasis*
    (re.compile(r"\|([\w-]+)\|"), r"\1"),                                   # |substitution|
    (re.compile(r"\\ "), ""),                                               # escaped space
    (re.compile(r"(\w)_\b"), r"\1"),                                        # reference_
]


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def skip_block(lines: list[str], start: int, parent_indent: int) -> int:
    """Index of the first line after the block indented deeper than ``parent_indent``."""
    i = start
    while i < len(lines) and (not lines[i].strip() or indent_of(lines[i]) > parent_indent):
        i += 1
    return i


def prose_lines(lines: list[str]) -> list[str]:
    """The page with literal blocks, code directives, comments and headings' underlines removed.

    Blank lines are kept as paragraph breaks; every kept line is stripped of its indentation.
    """
    out: list[str] = []
    i = 0
    while i < len(lines):
        line, stripped = lines[i], lines[i].strip()
        indent = indent_of(line)
        match = DIRECTIVE.match(stripped)
        if stripped.startswith(".."):
            is_code = match is None or match.group(1).split(":")[-1] in CODE_DIRECTIVES
            i = skip_block(lines, i + 1, indent) if is_code else i + 1
            out.append("")
            continue
        if stripped.endswith("::"):  # "for example::" introduces a literal block
            text = stripped[:-2].rstrip()
            out.append(text + ":" if text else "")
            i = skip_block(lines, i + 1, indent)
            out.append("")
            continue
        if UNDERLINE.match(stripped) or OPTION.match(stripped) or stripped.startswith((">>>", "...", "|", "+-")):
            out.append("")
        else:
            out.append(stripped)
        i += 1
    return out


def paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated paragraphs; list items start a new line inside their paragraph."""
    result, current = [], []
    for line in lines + [""]:
        if not line:
            if current:
                result.append("".join(current).strip())
            current = []
            continue
        bullet = BULLET.match(line)
        if bullet:
            current.append(("\n" if current else "") + line[bullet.end():])
        else:
            current.append((" " if current else "") + line)
    return result


def clean_inline(text: str) -> str:
    for pattern, replacement in INLINE:
        text = pattern.sub(replacement, text)
    return re.sub(r"[ \t]+", " ", text).strip()


def is_prose(paragraph: str) -> bool:
    """Sentences, not code or tables: enough words, mostly letters, few code symbols."""
    words = paragraph.split()
    if len(words) < 6 or len(paragraph) < 40:
        return False
    letters = sum(ch.isalpha() or ch.isspace() for ch in paragraph) / len(paragraph)
    symbols = sum(ch in "(){}[]=<>;_\\/@$%" for ch in paragraph) / len(paragraph)
    return letters >= 0.8 and symbols <= 0.03 and paragraph.isascii()


def page_text(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = (clean_inline(p) for p in paragraphs(prose_lines(lines)))
    return "\n\n".join(p for p in kept if is_prose(p))


def group_pages(docs: Path, folders: tuple[str, ...]) -> list[Path]:
    pages: list[Path] = []
    for folder in folders:
        found = docs.glob("*.rst.txt") if folder == "." else (docs / folder).rglob("*.rst.txt")
        pages.extend(p for p in found if p.name not in SKIPPED_PAGES)
    return sorted(pages)


def write_group(*, docs: Path, folders: tuple[str, ...], out_file: Path) -> tuple[int, int]:
    """Write one ``.jsonl.gz`` (fixed gzip mtime: reproducible bytes); returns (documents, chars)."""
    rows = []
    for page in group_pages(docs, folders):
        text = page_text(page)
        if len(text) >= 200:
            rows.append({"text": text, "path": page.relative_to(docs).as_posix().removesuffix(".txt")})
    payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    with open(out_file, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(payload)
    return len(rows), sum(len(row["text"]) for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="the docs' _sources folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not (args.docs / "library").is_dir():
        parser.error(f"{args.docs} holds no Python documentation sources: apt-get install python3.11-doc, "
                     "or pass --docs DIR (the _sources folder of the HTML docs)")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, folders in GROUPS.items():
        out_file = args.out / f"{name}.jsonl.gz"
        documents, chars = write_group(docs=args.docs, folders=folders, out_file=out_file)
        print(f"{out_file}: {documents} documents, {chars / 1e6:.2f} M characters, "
              f"{out_file.stat().st_size / 1e6:.2f} MB compressed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
