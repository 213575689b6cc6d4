"""Pretraining corpora: local files read through ``datasets``, bad rows counted per reason.

A source's ``path`` is a file, a folder, a glob, ``embedded`` (the corpus that ships in
``orchestrator/data/corpus``) or ``embedded:NAME`` (one of its files). Files may be ``.txt``,
``.jsonl``/``.json`` (one object per line) or ``.parquet``, each optionally gzip-compressed.

Text and JSONL files are read with ``load_dataset("text")`` (UTF-8, undecodable bytes replaced)
and checked row by row in a batched ``map``, so a bad row is counted, not fatal; a file that
cannot be read at all stops the run with its path.
"""
from __future__ import annotations

import glob
import gzip
import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from orchestrator.config.run import SourceConfig
from orchestrator.data.cache import atomic_directory, hash_of, sha256_file
from orchestrator.data.report import DataError, DataReport
from orchestrator.faults import SPACE_ERRNOS, is_fault

EMBEDDED_DIR = Path(__file__).resolve().parent / "corpus"
KINDS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
READER_VERSION = 1
"""Bump when the way rows are read or checked changes: it is part of every cache key."""


@dataclass(frozen=True)
class SourceDocuments:
    """One source's usable documents (a ``datasets.Dataset`` with one ``text`` column)."""

    name: str
    files: tuple[Path, ...]
    fingerprint: str
    """Hash of the files' contents and of how they are read: the key of everything derived."""
    documents: datasets.Dataset
    report: DataReport
    row_files: tuple[Path, ...] = ()
    """The files in the order their rows were read (grouped by kind: text, JSON, parquet)."""
    file_rows: tuple[int, ...] = ()
    """Rows read from each of ``row_files``, refused ones included."""
    kept_rows: np.ndarray | None = None
    """Each document's position among all rows read, so ``origin`` can name its file and row."""

    def origin(self, document: int) -> tuple[Path, int]:
        """(file, 0-based row of that file — a paragraph or line of a .txt) of document ``document``."""
        position = int(self.kept_rows[document])
        starts = np.cumsum((0,) + self.file_rows)
        file = int(np.searchsorted(starts, position, side="right")) - 1
        return self.row_files[file], position - int(starts[file])


def embedded_files(which: str | None = None) -> list[Path]:
    """The shipped corpus files, or the one called ``which`` (library, whatsnew, tutorial, …)."""
    files = sorted(EMBEDDED_DIR.glob("*.jsonl.gz"))
    if which is None:
        return files
    chosen = [f for f in files if f.name.split(".")[0] == which]
    if not chosen:
        names = ", ".join(f.name.split(".")[0] for f in files)
        raise DataError(f"embedded:{which}: no such embedded corpus file; choose from {names}")
    return chosen


def kind_of(path: Path) -> str:
    suffix = Path(path.name.removesuffix(".gz")).suffix
    if suffix not in KINDS:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; "
                        "use .txt, .jsonl, .json or .parquet (optionally .gz)")
    return KINDS[suffix]


def resolve_files(path: str) -> list[Path]:
    """The data files a source path names; a path that names nothing is an error naming it."""
    if path == "embedded" or path.startswith("embedded:"):
        return embedded_files(path.partition(":")[2] or None)
    target = Path(path).expanduser()
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.is_file() and not p.name.startswith("."))
        files = [p for p in files if Path(p.name.removesuffix(".gz")).suffix in KINDS]
    elif target.exists():
        files = [target]
    else:
        files = sorted(Path(p) for p in glob.glob(str(target), recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"data source {path}: no such file, or no .txt/.jsonl/.json/.parquet file there")
    for file in files:
        kind_of(file)
    return files


def check_readable(path: Path) -> None:
    """Open and read the first byte (gzip: the first decompressed byte); raise naming the path."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as handle:
            handle.read(1)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read data file {path}: {getattr(err, 'strerror', None) or err}") from None


def decompressed(path: Path, *, digest: str, cache_dir: Path) -> Path:
    """A plain copy of a ``.gz`` file in the cache (``datasets`` reads compressed text strictly)."""
    if not path.name.endswith(".gz"):
        return path
    name = path.name.removesuffix(".gz")
    target = cache_dir / "decompressed" / digest[:20]
    if not (target / name).is_file():
        try:
            with atomic_directory(target) as tmp, gzip.open(path, "rb") as src, open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError, zlib.error) as err:
            if is_fault(err) and (err.errno in SPACE_ERRNOS or err.filename != str(path)):  # the cache side
                raise OSError(err.errno, err.strerror, str(cache_dir)) from err
            raise DataError(f"cannot decompress data file {path}: {err}") from None
    return target / name


def source_fingerprint(source: SourceConfig, digests: list[str]) -> str:
    return hash_of({"digests": digests, "text_field": source.text_field, "text_unit": source.text_unit,
                    "reader": READER_VERSION})


def load_source(source: SourceConfig, *, cache_dir: Path) -> SourceDocuments:
    """Read one source's files, check every row, keep the good ones; an unusable source is an error."""
    files = resolve_files(source.path)
    for file in files:
        check_readable(file)
    digests = [sha256_file(f) for f in files]
    fingerprint = source_fingerprint(source, digests)
    plain = [decompressed(f, digest=d, cache_dir=cache_dir) for f, d in zip(files, digests)]
    parts, row_files = [], []
    for kind in ("text", "json", "parquet"):  # one file at a time, so every row knows its file
        for plain_file, file, digest in zip(plain, files, digests):
            if kind_of(file) == kind:
                parts.append(_checked_rows(kind, [str(plain_file)], source=source, cache_dir=cache_dir,
                                           fingerprint=f"{fingerprint[:16]}-{digest[:16]}"))
                row_files.append(file)
    rows = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    reasons = rows.with_format("arrow")["bad"].to_numpy(zero_copy_only=False)
    report = _tally(reasons, source=source.name)
    documents = rows.filter(lambda bad: [b == "" for b in bad], input_columns="bad", batched=True,
                            new_fingerprint=f"{fingerprint[:16]}-kept").remove_columns("bad")
    if len(documents) == 0:
        raise DataError(f"data source {source.name} ({source.path}) has no usable document: {report.summary()}"
                        + (f"; is the text in field {source.text_field!r}? set its text_field" if
                           report.bad_rows.get("missing_field") else ""))
    return SourceDocuments(name=source.name, files=tuple(files), fingerprint=fingerprint,
                           documents=documents, report=report, row_files=tuple(row_files),
                           file_rows=tuple(len(part) for part in parts), kept_rows=np.flatnonzero(reasons == ""))


def _checked_rows(kind: str, files: list[str], *, source: SourceConfig, cache_dir: Path,
                  fingerprint: str) -> datasets.Dataset:
    """Rows with a ``text`` column and a ``bad`` column ("" or the reason it is refused)."""
    hf_cache = str(cache_dir / "hf")
    if kind == "parquet":
        raw = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=hf_cache)
        if source.text_field not in raw.column_names:
            raise DataError(f"data source {source.name}: parquet files {files[0]}… have no column "
                            f"{source.text_field!r} (columns: {', '.join(raw.column_names)}); set its text_field")
        check, column = _check_texts(replaced_bytes=False), source.text_field
    else:
        sample_by = source.text_unit if kind == "text" else "line"
        raw = datasets.load_dataset("text", data_files=files, split="train", cache_dir=hf_cache,
                                    sample_by=sample_by, encoding_errors="replace")
        check = _check_texts(replaced_bytes=True) if kind == "text" else _parse_json_lines(source.text_field)
        column = "text"
    return raw.map(check, input_columns=column, batched=True, remove_columns=raw.column_names,
                   new_fingerprint=fingerprint)


def _text_reason(value: object, *, replaced_bytes: bool) -> str:
    if not isinstance(value, str):
        return "missing_field"
    if not value.strip():
        return "empty_text"
    if replaced_bytes and "\ufffd" in value:  # undecodable bytes were replaced by U+FFFD on reading
        return "bad_utf8"
    return ""


def _check_texts(*, replaced_bytes: bool):
    def check(texts: list) -> dict:
        bad = [_text_reason(t, replaced_bytes=replaced_bytes) for t in texts]
        return {"text": [t if not b else "" for t, b in zip(texts, bad)], "bad": bad}
    return check


def _json_reason(line: str, field: str) -> tuple[str, str]:
    """(text, reason) for one JSONL line."""
    if not line.strip():
        return "", "blank_line"
    if "\ufffd" in line:
        return "", "bad_utf8"
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return "", "bad_json"
    if not isinstance(row, dict):
        return "", "bad_json"
    reason = _text_reason(row.get(field), replaced_bytes=False)
    return (row[field], "") if not reason else ("", reason)


def _parse_json_lines(field: str):
    def parse(lines: list[str]) -> dict:
        texts, bad = zip(*(_json_reason(line, field) for line in lines)) if lines else ((), ())
        return {"text": list(texts), "bad": list(bad)}
    return parse


def _tally(reasons: np.ndarray, *, source: str) -> DataReport:
    """Refused rows per reason (``reasons``: "" or the reason, one per row read)."""
    bad: dict[str, int] = {}
    first: dict[str, str] = {}
    for reason in sorted(set(reasons.tolist()) - {""}):
        hits = np.flatnonzero(reasons == reason)
        bad[reason] = int(hits.size)
        first[reason] = f"row {int(hits[0]) + 1}"
    return DataReport(source=source, rows_read=len(reasons), rows_kept=len(reasons) - sum(bad.values()),
                      bad_rows=bad, first_bad=first)
