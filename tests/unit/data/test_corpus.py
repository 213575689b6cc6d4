import gzip
import json

import pytest

from orchestrator.config.run import SourceConfig
from orchestrator.data.corpus import embedded_files, load_source, resolve_files
from orchestrator.data.report import DataError


def test_the_embedded_corpus_ships_five_files_of_english_text():
    files = embedded_files()
    assert [f.name.split(".")[0] for f in files] == ["library", "reference", "tutorial", "using", "whatsnew"]
    assert sum(f.stat().st_size for f in files) < 4_000_000
    with gzip.open(embedded_files("tutorial")[0], "rt", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert set(first) == {"text", "path"} and " the " in first["text"]


def test_bad_rows_are_counted_per_reason_and_good_ones_kept(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"first paragraph\nstill first\n\nsecond \xff\xfe paragraph\n\n   \n\nthird\n")
    (tmp_path / "b.jsonl").write_text('{"text": "ok one"}\n{"body": "x"}\nnot json\n\n{"text": ""}\n[1]\n'
                                      '{"text": 5}\n{"text": "ok two"}\n')
    docs = load_source(SourceConfig(name="s", path=str(tmp_path)), cache_dir=tmp_path / "cache")
    assert docs.documents["text"][:] == ["first paragraph\nstill first", "third\n", "ok one", "ok two"]
    assert docs.report.bad_rows == {"bad_utf8": 1, "empty_text": 2, "missing_field": 2, "bad_json": 2,
                                    "blank_line": 1}
    assert docs.report.rows_read == 12 and docs.report.rows_kept == 4


def test_text_files_can_hold_one_document_per_line(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n")
    docs = load_source(SourceConfig(name="s", path=str(tmp_path / "a.txt"), text_unit="line"), cache_dir=tmp_path / "c")
    assert docs.documents["text"][:] == ["one", "two", "three"] and docs.report.bad_rows == {"empty_text": 1}


def test_gzip_and_parquet_sources_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as handle:
        handle.write('{"body": "zipped"}\n')
    pq.write_table(pa.table({"body": ["from parquet", None]}), tmp_path / "b.parquet")
    docs = load_source(SourceConfig(name="s", path=str(tmp_path), text_field="body"), cache_dir=tmp_path / "c")
    assert sorted(docs.documents["text"][:]) == ["from parquet", "zipped"]
    assert docs.report.bad_rows == {"missing_field": 1}


def test_a_missing_path_stops_with_the_path(tmp_path):
    with pytest.raises(DataError, match=f"data source {tmp_path}/nope.jsonl: no such file"):
        resolve_files(str(tmp_path / "nope.jsonl"))


def test_an_unreadable_file_stops_with_the_path(tmp_path):
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(b"this is not gzip data")
    with pytest.raises(DataError, match=f"cannot read data file {broken}"):
        load_source(SourceConfig(name="s", path=str(broken)), cache_dir=tmp_path / "c")


def test_a_source_without_usable_rows_names_the_field_to_set(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n{"body": "y"}\n')
    with pytest.raises(DataError, match="missing_field 2.*set its text_field"):
        load_source(SourceConfig(name="s", path=str(tmp_path / "a.jsonl")), cache_dir=tmp_path / "c")


def test_unknown_file_types_and_embedded_names_are_refused(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        resolve_files(str(tmp_path / "a.csv"))
    with pytest.raises(DataError, match="embedded:novels.*choose from library"):
        resolve_files("embedded:novels")
