"""Readers: one input file -> batches of records (Arrow tables in RECORD_SCHEMA).

Formats: JSONL (.jsonl/.json/.ndjson, plain, .gz or .zst; configurable text/id/url fields),
Parquet, plain text (.txt: one document per file), HTML files and WARC/WARC.gz crawls (response
records; url from WARC-Target-URI). Bad input never raises: it becomes a rejected record with a
reason (malformed JSON line with file and line, binary .html, over the size cap, missing text
field, non-HTML response), and a truncated or corrupt file adds one rejected record that names the
file, after the records read before the damage.
"""

from __future__ import annotations

import json
import posixpath
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from pipelines.corpus.schema import RECORD_SCHEMA, doc_key
from pipelines.corpus.sources import file_format, filesystem
from pipelines.corpus.streams import CorruptInput, InputStream

BATCH_BYTES = 32 << 20  # flush a batch early when its raw bytes pass this
HTML_TYPES = ("text/html", "application/xhtml+xml")
FILE_KEY = "#file"  # the record key of a reject that stands for the whole file (no record id)


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"
    id_field: str | None = "id"
    url_field: str | None = "url"
    max_doc_bytes: int = 2_000_000
    batch_docs: int = 64


class _Batcher:
    """Collects records into Arrow tables of at most `batch_docs` rows (or BATCH_BYTES raw bytes)."""

    def __init__(self, source: str, batch_docs: int):
        self.source, self.batch_docs = source, batch_docs
        self.rows: list[dict] = []
        self.bytes = 0
        self.started = time.thread_time()

    def add(self, record_key, fmt: str, *, raw=None, text=None, url=None, reason=None, detail=None):
        self.rows.append(
            {
                "key": doc_key(self.source, record_key),
                "source": self.source,
                "source_id": None if record_key == FILE_KEY else str(record_key),
                "url": url,
                "format": fmt,
                "raw": raw,
                "text": text,
                "stage": "read" if reason else None,
                "reason": reason,
                "detail": detail,
            }
        )
        self.bytes += len(raw or "") + len(text or "")

    def full(self) -> bool:
        return len(self.rows) >= self.batch_docs or self.bytes >= BATCH_BYTES

    def flush(self) -> pa.Table | None:
        if not self.rows:
            return None
        now = time.thread_time()
        share = (now - self.started) / len(self.rows)
        for row in self.rows:
            row["sec_read"] = share
        table = pa.Table.from_pylist(self.rows, schema=RECORD_SCHEMA)
        self.rows, self.bytes, self.started = [], 0, now
        return table


def read_file(uri: str, opts: ReadOptions, name: str | None = None) -> Iterator[pa.Table]:
    """The records of file `uri`; `name` (default: the URI) is what ids hash and rows call source."""
    fmt, compression = file_format(posixpath.basename(uri)) or ("text", None)
    batch = _Batcher(name or uri, opts.batch_docs)
    reader = {"jsonl": _jsonl, "parquet": _parquet, "text": _text, "html": _html, "warc": _warc}[fmt]
    try:
        for _ in reader(uri, compression, opts, batch):
            if batch.full():
                yield batch.flush()
    except (EOFError, CorruptInput, zlib.error, OSError, ValueError, pa.ArrowInvalid) as exc:
        name = posixpath.basename(uri)
        what = "truncated_file" if isinstance(exc, (EOFError, CorruptInput)) else "corrupt_file"
        batch.add(FILE_KEY, "text", reason=what, detail=f"{name}: {type(exc).__name__}: {exc}"[:500])
    last = batch.flush()
    if last is not None:
        yield last


def _too_large(size: int, opts: ReadOptions) -> str | None:
    return f"{size} bytes > max_doc_bytes={opts.max_doc_bytes}" if size > opts.max_doc_bytes else None


def _field(record: dict, name: str | None):
    value = record.get(name) if name else None
    return None if value is None else str(value)


def _jsonl(uri, compression, opts: ReadOptions, batch: _Batcher):
    name = posixpath.basename(uri)
    with InputStream(uri, compression) as src:
        for lineno, line in enumerate(src.stream, start=1):
            if not line.strip():
                continue  # blank lines hold no record
            if not line.endswith(b"\n") and src.damaged:
                break  # a line cut off by the damage is counted with the file, not as bad JSON
            if len(line) > opts.max_doc_bytes:
                batch.add(lineno, "text", reason="too_large", detail=f"{name}:{lineno}: {len(line)} bytes")
                yield
                continue
            try:
                record = json.loads(line.decode("utf-8", errors="replace"))
            except json.JSONDecodeError as exc:
                batch.add(lineno, "text", reason="malformed_json", detail=f"{name}:{lineno}: {exc.msg}")
                yield
                continue
            if not isinstance(record, dict):
                batch.add(lineno, "text", reason="malformed_json", detail=f"{name}:{lineno}: not an object")
                yield
                continue
            key = _field(record, opts.id_field) or lineno
            text = record.get(opts.text_field)
            if not isinstance(text, str):
                detail = f"{name}:{lineno}: no string field {opts.text_field!r}"
                batch.add(key, "text", reason="missing_text", detail=detail)
            else:
                batch.add(key, "text", text=text, url=_field(record, opts.url_field))
            yield
        src.check()


def _parquet(uri, compression, opts: ReadOptions, batch: _Batcher):
    import pyarrow.parquet as pq

    fs, path = filesystem(uri)
    pf = pq.ParquetFile(fs.open_input_file(path))
    names = set(pf.schema_arrow.names)
    if opts.text_field not in names:
        detail = f"{posixpath.basename(uri)}: no column {opts.text_field!r}"
        batch.add(FILE_KEY, "text", reason="missing_text", detail=detail)
        yield
        return
    columns = [c for c in (opts.text_field, opts.id_field, opts.url_field) if c and c in names]
    row = 0
    for record_batch in pf.iter_batches(batch_size=opts.batch_docs, columns=columns):
        for record in record_batch.to_pylist():
            row += 1
            key = _field(record, opts.id_field) or row
            text = record.get(opts.text_field)
            if not isinstance(text, str):
                batch.add(key, "text", reason="missing_text", detail=f"row {row}: null {opts.text_field!r}")
            elif len(text) > opts.max_doc_bytes:
                batch.add(key, "text", reason="too_large", detail=f"row {row}: {len(text)} chars")
            else:
                batch.add(key, "text", text=text, url=_field(record, opts.url_field))
            yield


def _read_capped(uri, compression, opts: ReadOptions) -> bytes | int:
    """The whole file, or its size when it is over the cap (never loads more than cap + 1 bytes)."""
    with InputStream(uri, compression) as src:
        data = src.stream.read(opts.max_doc_bytes + 1)
        size = len(data) + sum(len(chunk) for chunk in iter(lambda: src.stream.read(1 << 20), b""))
        src.check()
        return data if size <= opts.max_doc_bytes else size


def _one_document(uri, compression, opts: ReadOptions, batch: _Batcher, fmt: str):
    data = _read_capped(uri, compression, opts)
    if isinstance(data, int):
        batch.add(0, fmt, reason="too_large", detail=_too_large(data, opts))
    elif fmt == "html" and _looks_binary(data):
        batch.add(0, fmt, reason="binary_content", detail="NUL or control bytes in an .html file")
    else:
        batch.add(0, fmt, raw=data)
    yield


def _text(uri, compression, opts, batch):
    return _one_document(uri, compression, opts, batch, "text")


def _html(uri, compression, opts, batch):
    return _one_document(uri, compression, opts, batch, "html")


def _looks_binary(data: bytes) -> bool:
    head = data[:8192]
    if b"\x00" in head:
        return True
    controls = sum(head.count(bytes([c])) for c in (*range(1, 9), 14, 15, *range(16, 32)) if c != 27)
    return controls > len(head) * 0.05


def _warc(uri, compression, opts: ReadOptions, batch: _Batcher):
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    with InputStream(uri, compression) as src:
        records = ArchiveIterator(
            src.stream,
            record_types=WarcRecordType.response,
            parse_http=False,
            fsspec_args=False,
            stream_detect=False,
        )
        for index, record in enumerate(records):
            headers = record.headers
            url = headers.get("WARC-Target-URI")
            key = headers.get("WARC-Record-ID") or index
            declared = headers.get("Content-Length")
            if declared is None:
                raise CorruptInput(f"record {index} has no Content-Length")
            if int(declared) > opts.max_doc_bytes + 65536:
                record.reader.consume()
                batch.add(key, "html", url=url, reason="too_large", detail=_too_large(int(declared), opts))
                yield
                continue
            block = record.reader.read()
            if len(block) < int(declared):
                raise CorruptInput(f"record {index} ends after {len(block)} of {declared} bytes")
            status, content_type, body = _http_response(block)
            if status is None or not 200 <= status < 300:
                batch.add(key, "html", url=url, reason="http_status", detail=f"HTTP status {status}")
            elif content_type and not content_type.startswith(HTML_TYPES):
                batch.add(key, "html", url=url, reason="not_html", detail=content_type[:100])
            elif len(body) > opts.max_doc_bytes:
                batch.add(key, "html", url=url, reason="too_large", detail=_too_large(len(body), opts))
            else:
                batch.add(key, "html", raw=body, url=url)
            yield
        src.check()


def _http_response(block: bytes) -> tuple[int | None, str, bytes]:
    """(status, content type, decoded body) of a raw HTTP response (chunked and gzip handled)."""
    head, _, body = block.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    if headers.get("content-encoding", "").lower() in ("gzip", "x-gzip", "deflate"):
        try:
            body = zlib.decompress(body, 47)  # 47: accept gzip or zlib headers
        except zlib.error:
            pass
    return status, headers.get("content-type", "").lower(), body


def _dechunk(body: bytes) -> bytes:
    out, pos = [], 0
    while pos < len(body):
        end = body.find(b"\r\n", pos)
        if end < 0:
            break
        size = int(body[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(body[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2
    return b"".join(out)
