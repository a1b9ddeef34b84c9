"""The bytes of one input file, as the readers see them: plain, gzip or zstd (member after member),
from any pyarrow filesystem, with damage (a file cut short, a corrupt member) turned into
CorruptInput after every byte that could be read, rather than lost or raised mid-way."""

from __future__ import annotations

import io
import zlib

from pipelines.corpus.sources import filesystem


class CorruptInput(Exception):
    """The file ends early or cannot be decoded past some point."""


class _Decompressor(io.RawIOBase):
    """Streaming gzip or zstd decompression, member after member, that hands out every byte it can
    decode and then raises CorruptInput if the input stops inside a member (gzip.GzipFile drops
    its partial output when it raises; zstandard's stream_reader does not notice at all)."""

    def __init__(self, raw, compression: str):
        if compression == "gzip":
            self._new = lambda: zlib.decompressobj(zlib.MAX_WBITS | 16)
        else:
            import zstandard

            self._new = zstandard.ZstdDecompressor().decompressobj
        self._raw, self._obj, self._pending, self._inside = raw, self._new(), memoryview(b""), False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            # Small reads: a WARC.gz has a member per record, and the end of each member copies the
            # rest of its chunk (unused_data), so a large chunk would be copied over and over.
            chunk = self._raw.read(1 << 16)
            if not chunk:
                if self._inside:
                    raise CorruptInput("the compressed stream ends in the middle of a member")
                return 0
            decoded = []
            while chunk:
                if self._obj.eof:
                    self._obj = self._new()
                decoded.append(self._obj.decompress(chunk))
                self._inside = not self._obj.eof
                chunk = self._obj.unused_data if self._obj.eof else b""
            self._pending = memoryview(b"".join(decoded))  # handed out in slices, without copies
        n = min(len(buffer), len(self._pending))
        buffer[:n], self._pending = self._pending[:n], self._pending[n:]
        return n


class _ArrowReader(io.RawIOBase):
    """A pyarrow input stream as a Python raw stream (so it buffers, iterates lines, decompresses)."""

    def __init__(self, stream):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seekable(self) -> bool:
        return self._stream.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def close(self) -> None:
        self._stream.close()
        super().close()


class _StopAtDamage(io.RawIOBase):
    """Ends a decompressed stream where the damage starts and remembers why: readers get every
    record before the cut (a decompressor that raises would lose its whole read-ahead buffer)."""

    def __init__(self, inner):
        self._inner, self.damage, self._pos = inner, None, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.damage is not None:
            return 0
        try:
            data = self._inner.read(len(buffer))
        except (EOFError, CorruptInput, zlib.error, OSError) as exc:
            self.damage = f"{type(exc).__name__}: {exc}"
            return 0
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    # Forward seeking (by reading), as gzip.GzipFile offers: fastwarc seeks past record bodies.
    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._pos + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._pos:
            raise io.UnsupportedOperation("a compressed stream only seeks forward")
        while self._pos < target and self.readinto(bytearray(min(target - self._pos, 1 << 20))):
            pass
        return self._pos


class InputStream:
    """`with InputStream(uri, compression) as src:` read `src.stream`, then `src.check()` raises
    CorruptInput when the file ended early or could not be decompressed."""

    def __init__(self, uri: str, compression: str | None):
        fs, path = filesystem(uri)
        self._guard = None
        if compression is None:  # random access: fastwarc seeks in plain WARC files
            self.stream = io.BufferedReader(_ArrowReader(fs.open_input_file(path)), 1 << 20)
            return
        raw = io.BufferedReader(_ArrowReader(fs.open_input_stream(path, compression=None)), 1 << 20)
        self._guard = _StopAtDamage(_Decompressor(raw, compression))
        self.stream = io.BufferedReader(self._guard, buffer_size=1 << 20)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()

    @property
    def damaged(self) -> bool:
        return self._guard is not None and self._guard.damage is not None

    def check(self) -> None:
        if self.damaged:
            raise CorruptInput(self._guard.damage)
