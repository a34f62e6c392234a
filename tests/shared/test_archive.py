"""ZIP batches: members come out intact; bombs, traversal, links and excess are refused."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from shared.archive import expand_zip, is_zip
from shared.errors import InputError
from shared.imaging import sniff_format
from shared.settings import Settings
from tests.support.dicomkit import mr_dataset, to_bytes


def _zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def _code(data: bytes, settings: Settings) -> str:
    with pytest.raises(InputError) as err:
        expand_zip(data, settings)
    return err.value.code


def test_members_come_out_intact_and_folders_are_flattened() -> None:
    dicoms = [to_bytes(mr_dataset()) for _ in range(3)]
    data = _zip([("study/a.dcm", dicoms[0]), ("study/series/b.dcm", dicoms[1]),
                 ("c", dicoms[2]), ("__MACOSX/._a.dcm", b"junk"), (".DS_Store", b"junk"),
                 ("study/", b"")])
    assert is_zip(data) and not is_zip(dicoms[0])
    members = expand_zip(data, Settings())
    assert [m.name for m in members] == ["a.dcm", "b.dcm", "c"]
    assert [m.data for m in members] == dicoms
    assert all(sniff_format(m.data) == "dicom" for m in members)


def test_too_many_members() -> None:
    data = _zip([(f"{i}.dcm", b"x") for i in range(4)])
    assert _code(data, Settings(max_batch_files=3)) == "archive_too_many_files"
    assert len(expand_zip(data, Settings(max_batch_files=4))) == 4


def test_zip_bomb_is_stopped_by_the_byte_budget() -> None:
    data = _zip([("bomb.dcm", b"\0" * (8 << 20))])
    assert len(data) < 100_000  # the point of a bomb: tiny on the wire
    assert _code(data, Settings(max_archive_bytes=1 << 20)) == "archive_too_large"


def test_lying_header_is_still_bounded() -> None:
    # Declared sizes are rewritten to look small; the decompressed byte count must still stop it.
    data = bytearray(_zip([("bomb.dcm", b"\0" * (4 << 20))]))
    true_size = (4 << 20).to_bytes(4, "little")
    data = data.replace(true_size, (100).to_bytes(4, "little"))
    with pytest.raises(InputError) as err:
        expand_zip(bytes(data), Settings(max_archive_bytes=1 << 20))
    assert err.value.code in ("archive_too_large", "archive_invalid")


@pytest.mark.parametrize("name", ["../evil.dcm", "/etc/passwd", "a/../../b.dcm", "C:\\x.dcm",
                                  "..\\..\\x.dcm"])
def test_path_traversal_is_refused(name: str) -> None:
    assert _code(_zip([(name, b"x")]), Settings()) == "archive_unsafe_path"


def test_symlink_member_is_refused() -> None:
    info = zipfile.ZipInfo("link.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert _code(_zip([(info, b"/etc/passwd")]), Settings()) == "archive_unsafe_path"


def test_not_a_zip_and_empty_zip() -> None:
    assert _code(b"PK\x03\x04garbage", Settings()) == "archive_invalid"
    assert _code(_zip([("only/", b"")]), Settings()) == "archive_empty"
