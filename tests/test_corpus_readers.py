"""Readers over every input format, and every kind of bad input becoming a counted reject."""

from __future__ import annotations

import gzip
import random

import pyarrow as pa
import pytest
import zstandard

from pipelines.corpus.readers import ReadOptions, read_file
from pipelines.corpus.schema import RECORD_SCHEMA, doc_key
from pipelines.corpus.sources import file_format, resolve
from pipelines.errors import UserError
from tests.corpus_inputs import english_doc, html_page, write_jsonl, write_parquet, write_warc

OPTS = ReadOptions(max_doc_bytes=64 * 1024, batch_docs=3)


def read_all(path, opts: ReadOptions = OPTS) -> list[dict]:
    tables = list(read_file(str(path), opts))
    assert all(t.schema == RECORD_SCHEMA for t in tables)
    assert all(t.num_rows <= opts.batch_docs for t in tables)
    return pa.concat_tables(tables).to_pylist() if tables else []


@pytest.fixture
def docs():
    rng = random.Random(7)
    return [english_doc(rng) for _ in range(8)]


@pytest.mark.parametrize(
    "compression,suffix", [(None, ".jsonl"), ("gzip", ".jsonl.gz"), ("zstd", ".jsonl.zst")]
)
def test_jsonl_in_every_compression(tmp_path, docs, compression, suffix):
    path = tmp_path / f"docs{suffix}"
    write_jsonl(
        path, [{"id": f"r{i}", "text": d, "url": f"https://x/{i}"} for i, d in enumerate(docs)], compression
    )
    rows = read_all(path)
    assert [r["text"] for r in rows] == docs
    assert [r["url"] for r in rows] == [f"https://x/{i}" for i in range(len(docs))]
    assert all(r["reason"] is None and r["format"] == "text" and r["source"] == str(path) for r in rows)
    assert [r["key"] for r in rows] == [doc_key(str(path), f"r{i}") for i in range(len(docs))]


def test_jsonl_fields_are_configurable_and_ids_default_to_line_numbers(tmp_path, docs):
    path = tmp_path / "custom.jsonl"
    write_jsonl(path, [{"content": docs[0], "link": "u0"}, {"content": docs[1], "link": "u1"}])
    rows = read_all(path, ReadOptions(text_field="content", id_field=None, url_field="link"))
    assert [r["text"] for r in rows] == docs[:2] and [r["url"] for r in rows] == ["u0", "u1"]
    assert [r["key"] for r in rows] == [doc_key(str(path), 1), doc_key(str(path), 2)]


def test_malformed_json_lines_name_file_and_line(tmp_path, docs):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [{"text": docs[0]}, '{"text": "unterminated', "[1, 2]", {"body": "x"}, {"text": 5}])
    rows = read_all(path)
    assert [r["reason"] for r in rows] == [
        None,
        "malformed_json",
        "malformed_json",
        "missing_text",
        "missing_text",
    ]
    assert rows[1]["detail"].startswith("bad.jsonl:2: ") and rows[2]["detail"].startswith("bad.jsonl:3: ")
    assert rows[4]["detail"] == "bad.jsonl:5: no string field 'text'"
    assert all(r["stage"] == "read" for r in rows[1:])


def test_invalid_utf8_line_is_read_with_replacement_characters(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "caf\xe9 cr\xe8me"}\n')
    (row,) = read_all(path)
    assert row["reason"] is None and row["text"] == "caf\ufffd cr\ufffdme"


@pytest.mark.parametrize("compression,suffix", [("gzip", ".jsonl.gz"), ("zstd", ".jsonl.zst")])
def test_truncated_compressed_file_keeps_what_was_read_and_names_the_file(
    tmp_path, docs, compression, suffix
):
    path = tmp_path / f"cut{suffix}"
    rng = random.Random(3)
    many = [english_doc(rng) for _ in range(400)]  # ~400 kB: several compressed blocks
    write_jsonl(path, [{"text": d} for d in many], compression)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    rows = read_all(path)
    good, last = rows[:-1], rows[-1]
    assert 0 < len(good) < len(many) and [r["text"] for r in good] == many[: len(good)]
    assert all(r["reason"] is None for r in good)
    assert [r["source_id"] for r in good] == [str(n) for n in range(1, len(good) + 1)]  # line numbers
    assert last["reason"] == "truncated_file" and last["detail"].startswith(f"cut{suffix}: ")
    assert last["source_id"] is None  # the file's reject stands for no record


def test_parquet_rows_and_missing_column(tmp_path, docs):
    path = tmp_path / "p.parquet"
    write_parquet(path, [{"id": "x", "text": docs[0], "url": "u"}, {"id": "y", "text": None, "url": None}])
    rows = read_all(path)
    assert rows[0]["text"] == docs[0] and rows[0]["key"] == doc_key(str(path), "x")
    assert rows[1]["reason"] == "missing_text"
    other = tmp_path / "q.parquet"
    write_parquet(other, [{"body": "x"}])
    (row,) = read_all(other)
    assert row["reason"] == "missing_text" and "no column 'text'" in row["detail"]


def test_text_and_html_files_are_one_document_each(tmp_path, docs):
    (tmp_path / "t.txt").write_text(docs[0])
    (tmp_path / "p.html").write_text(html_page(docs[1]))
    (text,) = read_all(tmp_path / "t.txt")
    (html,) = read_all(tmp_path / "p.html")
    assert text["raw"] == docs[0].encode() and text["format"] == "text"
    assert html["format"] == "html" and b"<main>" in html["raw"]


def test_binary_html_empty_and_oversized_files(tmp_path, docs):
    (tmp_path / "bin.html").write_bytes(bytes(range(256)) * 16)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "big.txt").write_text(docs[0] * 1000)
    (binary,) = read_all(tmp_path / "bin.html")
    (empty,) = read_all(tmp_path / "empty.txt")
    (big,) = read_all(tmp_path / "big.txt")
    assert binary["reason"] == "binary_content"
    assert empty["reason"] is None and empty["raw"] == b""  # judged "empty" after normalisation
    assert big["reason"] == "too_large" and f"{len(docs[0]) * 1000} bytes" in big["detail"]


@pytest.mark.parametrize("compress", [True, False])
def test_warc_responses(tmp_path, docs, compress):
    path = tmp_path / ("crawl.warc.gz" if compress else "crawl.warc")
    write_warc(
        path,
        [
            ("https://w/0", html_page(docs[0]).encode()),
            ("https://w/1", html_page(docs[1]).encode(), "application/xhtml+xml"),
            ("https://w/img", b"\x89PNG", "image/png"),
            ("https://w/gone", b"<html>gone</html>", "text/html", "404 Not Found"),
            ("https://w/huge", b"<p>" + b"x" * (70 * 1024) + b"</p>"),
        ],
        compress=compress,
    )
    rows = read_all(path)
    assert [r["url"] for r in rows] == [
        "https://w/0",
        "https://w/1",
        "https://w/img",
        "https://w/gone",
        "https://w/huge",
    ]
    assert [r["reason"] for r in rows] == [None, None, "not_html", "http_status", "too_large"]
    assert rows[0]["raw"] == html_page(docs[0]).encode()
    assert len({r["key"] for r in rows}) == 5


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_warc_is_reported_by_name(tmp_path, docs, compress):
    path = tmp_path / ("cut.warc.gz" if compress else "cut.warc")
    write_warc(
        path, [(f"https://w/{i}", html_page(d * 3).encode()) for i, d in enumerate(docs)], compress=compress
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    rows = read_all(path)
    assert 0 < len(rows) - 1 < len(docs) and all(r["reason"] is None for r in rows[:-1])
    assert rows[-1]["reason"] == "truncated_file" and rows[-1]["detail"].startswith(f"{path.name}: ")


def test_warc_gz_over_many_read_chunks_keeps_every_record(tmp_path):
    """Records (one gzip member each) cross the decompressor's 64 KiB read chunks: each arrives
    intact, in order, and a cut anywhere keeps every record before it."""
    rng = random.Random(11)
    pages = [html_page(english_doc(rng) + f" page {i}").encode() for i in range(400)]
    path = tmp_path / "big.warc.gz"
    write_warc(path, [(f"https://w/{i}", page) for i, page in enumerate(pages)], compress=True)
    data = path.read_bytes()
    assert len(data) > 4 * 65536  # the property under test needs several chunks
    assert [r["raw"] for r in read_all(path)] == pages
    for cut in (65536 + 7, len(data) // 2, len(data) - 100):
        path.write_bytes(data[:cut])
        rows = read_all(path)
        assert [r["raw"] for r in rows[:-1]] == pages[: len(rows) - 1]
        assert rows[-1]["reason"] == "truncated_file"


def test_gzip_member_cut_in_its_trailer_is_truncated(tmp_path, docs):
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(f'{{"text": "{i}"}}\n'.encode() for i in range(5)))[:-4])
    assert read_all(path)[-1]["reason"] == "truncated_file"


def test_ids_are_stable_across_reads(tmp_path, docs):
    path = tmp_path / "s.jsonl.zst"
    write_jsonl(path, [{"text": d} for d in docs], "zstd")
    assert [r["key"] for r in read_all(path)] == [r["key"] for r in read_all(path)]
    assert zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())  # a real zstd file


def test_formats_by_name():
    assert file_format("a.warc.gz") == ("warc", "gzip")
    assert file_format("A.JSONL.ZST") == ("jsonl", "zstd")
    assert file_format("x.parquet") == ("parquet", None)
    assert file_format("x.parquet.gz") is None and file_format("x.pdf") is None


def test_resolve_globs_dirs_and_errors(tmp_path, docs):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.txt").write_text(docs[0])
    (tmp_path / "in" / "sub" / "b.jsonl").write_text("")
    (tmp_path / "in" / ".hidden").write_text("x")
    by_dir = resolve([str(tmp_path / "in")])
    assert [f.uri for f in by_dir] == [
        str(tmp_path / "in" / "a.txt"),
        str(tmp_path / "in" / "sub" / "b.jsonl"),
    ]
    assert by_dir[0].size == len(docs[0])
    assert (
        resolve([str(tmp_path / "in" / "**" / "*.jsonl"), str(tmp_path / "in" / "sub" / "b.jsonl")])
        == by_dir[1:]
    )
    with pytest.raises(UserError, match=r"config key 'corpus.inputs' is empty"):
        resolve([])
    with pytest.raises(UserError, match=r"'corpus.inputs': '.*/nope/\*.txt' matches no file"):
        resolve([str(tmp_path / "nope" / "*.txt")])
    (tmp_path / "in" / "c.pdf").write_bytes(b"%PDF")
    with pytest.raises(UserError, match=r"corpus.inputs: .*c.pdf: unknown format"):
        resolve([str(tmp_path / "in")])
