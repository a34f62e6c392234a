"""ZIP batches: expand an uploaded archive into its member files, defensively.

Nothing is written to disk, but we still refuse what a careless unzip would be hurt by:
too many members, too many bytes once expanded (a zip bomb: members are read in chunks and
the count stops at the limit, whatever the headers claim), absolute or `..` paths, links,
encrypted members. Folders, macOS resource forks and hidden files are skipped, not refused.
"""

from __future__ import annotations

import io
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

from shared.errors import InputError
from shared.settings import Settings, get_settings

ZIP_MAGIC = b"PK\x03\x04"

ARCHIVE_INVALID = "archive_invalid"
ARCHIVE_TOO_MANY_FILES = "archive_too_many_files"
ARCHIVE_TOO_LARGE = "archive_too_large"
ARCHIVE_UNSAFE_PATH = "archive_unsafe_path"
ARCHIVE_EMPTY = "archive_empty"

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    """One file from the archive: its base name (client text) and its bytes, or why it could
    not be read (a corrupt member is refused alone; its archive-mates are still accepted)."""

    name: str
    data: bytes
    error: InputError | None = None


def is_zip(data: bytes) -> bool:
    """By magic bytes only, like every other format we accept."""
    return data.startswith(ZIP_MAGIC)


def expand_zip(data: bytes, settings: Settings | None = None, *,
               max_files: int | None = None) -> list[Member]:
    """The archive's files in archive order, or InputError naming the limit that was hit."""
    settings = settings or get_settings()
    limit_files = max_files if max_files is not None else settings.max_batch_files
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError,
            UnicodeDecodeError) as exc:
        raise InputError("The ZIP archive could not be read.", code=ARCHIVE_INVALID) from exc
    with archive:
        infos = [i for i in archive.infolist() if not _skipped(i)]
        for info in infos:
            _check_member(info)
        if len(infos) > limit_files:
            raise InputError(f"The archive holds {len(infos)} files; the limit is {limit_files}.",
                             code=ARCHIVE_TOO_MANY_FILES)
        declared = sum(i.file_size for i in infos)
        if declared > settings.max_archive_bytes:
            raise InputError(_too_large(settings), code=ARCHIVE_TOO_LARGE, http_status=413)
        members: list[Member] = []
        budget = settings.max_archive_bytes
        for info in infos:
            name = PurePosixPath(info.filename).name
            try:
                payload = _read_bounded(archive, info, budget, settings)
            except InputError as exc:
                if exc.code == ARCHIVE_TOO_LARGE:
                    raise  # the archive as a whole is over budget
                members.append(Member(name=name, data=b"", error=exc))
                continue
            budget -= len(payload)
            members.append(Member(name=name, data=payload))
    if not members:
        raise InputError("The archive holds no files.", code=ARCHIVE_EMPTY)
    if all(m.error is not None for m in members):
        raise members[0].error  # nothing readable: the archive itself is refused
    return members


def _skipped(info: zipfile.ZipInfo) -> bool:
    parts = PurePosixPath(info.filename.replace("\\", "/")).parts
    return info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith(".")


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise InputError("The archive holds a member with an absolute or '..' path; it is refused.",
                         code=ARCHIVE_UNSAFE_PATH)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InputError("The archive holds a symbolic link; it is refused.",
                         code=ARCHIVE_UNSAFE_PATH)
    if info.flag_bits & 0x1:
        raise InputError("The archive holds an encrypted member; send it unencrypted.",
                         code=ARCHIVE_INVALID)


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int,
                  settings: Settings) -> bytes:
    # Never trust the declared size: count what actually comes out of the decompressor.
    out = bytearray()
    try:
        with archive.open(info) as fh:
            while chunk := fh.read(_CHUNK):
                out += chunk
                if len(out) > budget:
                    raise InputError(_too_large(settings), code=ARCHIVE_TOO_LARGE, http_status=413)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, ValueError,
            RuntimeError) as exc:  # zlib/bz2/lzma errors escape zipfile unwrapped
        raise InputError("This member of the ZIP archive could not be read (corrupt or "
                         "unsupported compression).", code=ARCHIVE_INVALID) from exc
    return bytes(out)


def _too_large(settings: Settings) -> str:
    return f"The archive expands to more than {settings.max_archive_bytes} bytes; split it."
