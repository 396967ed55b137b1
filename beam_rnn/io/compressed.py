"""Opening corpus files: transparent decompression that detects truncated and corrupt streams.

Beam's CompressedFile reads a gzip stream cut at a line boundary as a shorter,
complete file; `open_corpus_file` instead raises `CorruptFileError`
(`truncated_file` / `unreadable_file`) after every byte before the damage, and
lets I/O errors through so that the runner retries the bundle.
"""

import bz2
import contextlib
import gzip
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_rnn.io.records import REASON_TRUNCATED_FILE, REASON_UNREADABLE_FILE

_DECOMPRESS_CHUNK_BYTES = 64 << 10


class CorruptFileError(Exception):
    """A file's contents end early or cannot be decoded (not an I/O failure).

    Attributes:
      code: `REASON_TRUNCATED_FILE` or `REASON_UNREADABLE_FILE`.
      detail: What was found and where (byte offsets).
    """

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class _SourceBytes(io.RawIOBase):
    """The bytes of a file as its filesystem returns them: counted, I/O errors remembered.

    A decompressor raises OSError both for corrupt data and (passing it on) for a
    failed read; `io_error` tells the two apart, so that only the first becomes a
    dead letter and the second still fails the bundle for the runner to retry.
    """

    def __init__(self, handle: BinaryIO):
        super().__init__()
        self._handle = handle
        self.offset = 0
        self.io_error: OSError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._handle.read(len(buffer))
        except OSError as e:
            self.io_error = e
            raise
        buffer[: len(data)] = data
        self.offset += len(data)
        return len(data)


class _DecompressedStream(io.RawIOBase):
    """Decompresses a stream of concatenated frames with a ``decompressobj``-like object.

    Used for DEFLATE and ZSTD (gzip, bzip2 and xz use the standard library's
    readers); raises EOFError when the input ends inside a frame.
    """

    def __init__(self, source: io.RawIOBase, new_decompressor: Callable[[], Any]):
        super().__init__()
        self._source = source
        self._new_decompressor = new_decompressor
        self._decompressor = new_decompressor()
        self._output = memoryview(b"")
        self._position = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        while not len(self._output):
            if self._decompressor.eof:
                data = self._decompressor.unused_data or self._source.read(_DECOMPRESS_CHUNK_BYTES)
                if not data:
                    return 0
                self._decompressor = self._new_decompressor()  # the next concatenated frame
            else:
                data = self._source.read(_DECOMPRESS_CHUNK_BYTES)
                if not data:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            self._output = memoryview(self._decompressor.decompress(data))
        size = min(len(buffer), len(self._output))
        buffer[:size] = self._output[:size]
        self._output = self._output[size:]
        self._position += size
        return size


def _decompressing_reader(source: io.RawIOBase, compression_type: str) -> BinaryIO:
    if compression_type == CompressionTypes.GZIP:
        return gzip.GzipFile(fileobj=source, mode="rb")
    if compression_type == CompressionTypes.BZIP2:
        return bz2.BZ2File(source, mode="rb")
    if compression_type == CompressionTypes.LZMA:
        return lzma.LZMAFile(source, mode="rb")
    if compression_type == CompressionTypes.DEFLATE:
        return io.BufferedReader(_DecompressedStream(source, zlib.decompressobj))
    if compression_type == CompressionTypes.ZSTD:
        import zstandard  # pylint: disable=import-outside-toplevel

        # The window bound Beam uses too (memory of huge-window frames).
        new = lambda: zstandard.ZstdDecompressor(max_window_size=2147483648).decompressobj()  # noqa: E731
        return io.BufferedReader(_DecompressedStream(source, new))
    raise ValueError(f"unsupported compression type {compression_type!r}")


def _decompression_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, zlib.error, lzma.LZMAError]
    try:
        import zstandard  # pylint: disable=import-outside-toplevel

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


@contextlib.contextmanager
def open_corpus_file(path: str, compression_type: str = CompressionTypes.AUTO) -> Iterator[BinaryIO]:
    """Opens a corpus file for reading, decompressing it by its extension.

    Unlike Beam's CompressedFile, a compressed stream that ends before its
    end-of-stream marker (a partial download, even one cut on a line boundary) is
    detected, and so is corrupt compressed data: reading raises `CorruptFileError`
    (`truncated_file` / `unreadable_file`) with the byte offsets, after every byte
    before the damage was returned.  I/O errors propagate unchanged.  Any Beam
    filesystem (gs:// included): the file is opened through `FileSystems`.

    Args:
      path: The file.
      compression_type: A `CompressionTypes` value; AUTO picks it from the extension.

    Yields:
      A binary file object with ``read`` and ``readline(size)``.
    """
    if compression_type == CompressionTypes.AUTO:
        compression_type = CompressionTypes.detect_compression_type(path)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        if compression_type == CompressionTypes.UNCOMPRESSED:
            yield handle
            return
        source = _SourceBytes(handle)
        stream = _decompressing_reader(source, compression_type)

        def where() -> str:
            try:
                decompressed = f"decompressed byte {stream.tell()}, "
            except (OSError, ValueError):
                decompressed = ""
            return f"{decompressed}compressed byte {source.offset}"

        try:
            yield stream
        except EOFError as e:
            detail = f"{compression_type} data ends before its end-of-stream marker ({where()}, the end of the file)"
            raise CorruptFileError(REASON_TRUNCATED_FILE, detail) from e
        except _decompression_errors() as e:
            if source.io_error is not None:
                raise
            detail = f"corrupt {compression_type} data ({type(e).__name__}: {e}) at {where()}"
            raise CorruptFileError(REASON_UNREADABLE_FILE, detail) from e

