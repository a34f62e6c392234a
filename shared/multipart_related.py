"""Streaming parser for `multipart/related` bodies (DICOMweb STOW-RS requests and answers).

Each part is spooled to a temporary file as it arrives, so a series of hundreds of slices is
never held in memory whole. Built on python-multipart's boundary scanner (already a FastAPI
dependency); only the part headers we need are kept.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import IO

from python_multipart.multipart import MultipartParser

from shared.errors import InputError

_SPOOL_BYTES = 1 << 20


@dataclass
class Part:
    content_type: str
    file: IO[bytes]
    size: int = 0

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """('multipart/related', {'type': 'application/dicom', 'boundary': ...}), lower-case type."""
    msg = Message()
    msg["content-type"] = value
    params = {k.lower(): v for k, v in msg.get_params()[1:]} if msg.get_params() else {}
    return msg.get_content_type().lower(), params


@dataclass
class _Collector:
    max_part_bytes: int
    parts: list[Part] = field(default_factory=list)
    _field: bytes = b""
    _value: bytes = b""
    _headers: dict[str, str] = field(default_factory=dict)
    _current: Part | None = None

    def callbacks(self) -> dict[str, object]:
        return {"on_part_begin": self._begin, "on_header_field": self._hfield,
                "on_header_value": self._hvalue, "on_header_end": self._hend,
                "on_headers_finished": self._hdone, "on_part_data": self._data}

    def _begin(self) -> None:
        self._headers = {}

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _hend(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field = self._value = b""

    def _hdone(self) -> None:
        ctype = self._headers.get("content-type", "application/octet-stream")
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
        self._current = Part(content_type=parse_content_type(ctype)[0], file=spool)
        self.parts.append(self._current)

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        assert part is not None
        part.size += end - start
        if part.size > self.max_part_bytes:
            raise InputError(f"A part is larger than the limit of {self.max_part_bytes} bytes.",
                             code="file_too_large", http_status=413)
        part.file.write(data[start:end])


async def parse(chunks: AsyncIterator[bytes], boundary: str, max_part_bytes: int) -> list[Part]:
    """The parts of a multipart body, each spooled; InputError when it is not one."""
    collector = _Collector(max_part_bytes)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    async for chunk in chunks:
        if chunk:
            parser.write(chunk)
    parser.finalize()
    return collector.parts


def encode(parts: Iterator[tuple[str, bytes]], boundary: str) -> bytes:
    """A multipart/related body from (content type, bytes) pairs (for STOW-RS requests)."""
    out = bytearray()
    for ctype, data in parts:
        out += f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)
