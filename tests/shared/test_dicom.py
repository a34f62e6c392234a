"""DICOM decoding: pixel pipeline, checks with their codes, and every transfer syntax we claim."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from shared.dicom import decode_dicom
from shared.errors import InputError
from shared.imaging import decode_image
from shared.settings import Settings
from tests.support.dicomkit import brain_like, gdcm_compress, jpeg_baseline, mr_dataset, to_bytes

S = Settings(allowed_modalities=["MR"], allow_burned_in_annotation=False)


def _code(data: bytes, settings: Settings = S, **kw) -> str:
    with pytest.raises(InputError) as err:
        decode_dicom(data, settings=settings, **kw)
    return err.value.code


@pytest.mark.parametrize("bits,signed", [(8, False), (12, False), (16, False), (16, True)])
def test_bit_depths_decode_to_unit_range_in_order(bits: int, signed: bool) -> None:
    ds = mr_dataset(bits=bits, signed=signed)
    img = decode_dicom(to_bytes(ds), settings=S)
    raw = ds.pixel_array.astype(np.float64)
    assert img.format == "dicom" and img.pixels.dtype == np.float32
    assert img.pixels.shape == raw.shape and img.pixels.min() >= 0.0 and img.pixels.max() <= 1.0
    # Brighter stored values stay brighter (the robust stretch is monotonic).
    assert np.corrcoef(img.pixels.ravel(), raw.ravel())[0, 1] > 0.99
    assert img.meta["bits_stored"] == bits and img.meta["windowed"] is False


def test_monochrome1_is_inverted() -> None:
    two = decode_dicom(to_bytes(mr_dataset(photometric="MONOCHROME2")), settings=S).pixels
    one = decode_dicom(to_bytes(mr_dataset(photometric="MONOCHROME1")), settings=S).pixels
    np.testing.assert_allclose(one, 1.0 - two, atol=1e-6)


def test_rescale_then_linear_window() -> None:
    ds = mr_dataset(bits=12)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-1000"
    ds.WindowCenter, ds.WindowWidth = ["1000", "50"], ["2001", "10"]  # first pair wins
    img = decode_dicom(to_bytes(ds), settings=S)
    x = ds.pixel_array.astype(np.float64) * 2 - 1000
    expected = np.clip((x - 999.5) / 2000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-5)
    assert img.meta["windowed"] is True


def test_sigmoid_window() -> None:
    ds = mr_dataset(bits=12)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = "2000", "800", "SIGMOID"
    img = decode_dicom(to_bytes(ds), settings=S)
    x = ds.pixel_array.astype(np.float64)
    np.testing.assert_allclose(img.pixels, 1 / (1 + np.exp(-4 * (x - 2000) / 800)), atol=1e-5)


def test_multiframe_middle_by_default_or_named_frame() -> None:
    ds = mr_dataset(frames=5)
    data = to_bytes(ds)
    frames = ds.pixel_array
    middle = decode_dicom(data, settings=S)
    assert middle.meta["frames"] == 5 and middle.meta["frame"] == 2
    first = decode_dicom(data, frame=0, settings=S)
    assert first.meta["frame"] == 0
    # Frame k is the base image scaled by (0.5 + k/8): frame 0 is the darkest, so its
    # normalised pixels match its own stretch, not the middle frame's raw values.
    assert np.corrcoef(first.pixels.ravel(), frames[0].ravel())[0, 1] > 0.99
    assert _code(data, frame=5) == "dicom_frame_out_of_range"
    assert _code(data, frame=-1) == "dicom_frame_out_of_range"
    assert _code(to_bytes(mr_dataset()), frame=1) == "dicom_frame_out_of_range"


def test_enhanced_multiframe_functional_group_window() -> None:
    ds = mr_dataset(bits=12, frames=3)
    shared = Dataset()
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = "1500", "1000"
    shared.FrameVOILUTSequence = [voi]
    ds.SharedFunctionalGroupsSequence = [shared]
    img = decode_dicom(to_bytes(ds), settings=S)
    x = ds.pixel_array[1].astype(np.float64)
    np.testing.assert_allclose(img.pixels, np.clip((x - 1499.5) / 999 + 0.5, 0, 1), atol=1e-5)


def test_modality_check_is_configurable() -> None:
    data = to_bytes(mr_dataset(modality="CT"))
    assert _code(data) == "dicom_modality_not_allowed"
    assert decode_dicom(data, settings=Settings(allowed_modalities=["MR", "CT"])).meta["modality"] == "CT"


def test_no_pixel_data() -> None:
    ds = mr_dataset()
    del ds.PixelData
    assert _code(to_bytes(ds)) == "dicom_no_pixel_data"


def test_encapsulated_pdf_is_refused() -> None:
    ds = mr_dataset(modality="DOC")
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    assert _code(to_bytes(ds)) == "dicom_encapsulated_document"


def test_burned_in_annotation_refused_unless_configured() -> None:
    ds = mr_dataset()
    ds.BurnedInAnnotation = "YES"
    data = to_bytes(ds)
    assert _code(data) == "dicom_burned_in_annotation"
    allowed = Settings(allowed_modalities=["MR"], allow_burned_in_annotation=True)
    assert decode_dicom(data, settings=allowed).pixels.shape == (96, 96)


def test_unsupported_transfer_syntax() -> None:
    ds = mr_dataset(bits=8)
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    with pytest.raises(InputError) as err:
        decode_dicom(to_bytes(ds), settings=S)
    assert err.value.code == "dicom_unsupported_transfer_syntax" and err.value.http_status == 415


def test_truncated_pixel_data_is_undecodable() -> None:
    data = to_bytes(mr_dataset())
    with pytest.raises(InputError) as err:
        decode_image(data[: len(data) - 4000])
    assert err.value.code == "undecodable_image" and "DOE" not in err.value.message


def test_deflate_bomb_is_refused_before_inflating() -> None:
    ds = mr_dataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.add_new(0x00091010, "OB", b"\0" * (4 << 20))  # 4 MiB of zeros deflate to a few KiB
    ds.add_new(0x00090010, "LO", "PADDING")
    data = to_bytes(ds)
    assert len(data) < 64 * 1024
    small = Settings(max_upload_bytes=256 * 1024)  # inflation limit: 8x, so 2 MiB
    with pytest.raises(InputError) as err:
        decode_dicom(data, settings=small)
    assert err.value.code == "file_too_large" and err.value.http_status == 413
    assert decode_dicom(data, settings=S).pixels.shape == (96, 96)


# --- transfer syntaxes: every one we claim, built here and decoded ---------------------------

def _reference(bits: int = 16) -> tuple[Dataset, np.ndarray]:
    ds = mr_dataset(brain_like(128, seed=3), bits=bits)
    return ds, decode_dicom(to_bytes(ds), settings=S).pixels


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian])
def test_native_syntaxes_lossless(syntax: str) -> None:
    ds, ref = _reference()
    if syntax == ExplicitVRBigEndian:  # pydicom writes OW bytes as given: swap them ourselves
        ds.PixelData = ds.pixel_array.astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = syntax
    data = to_bytes(ds)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax
    img = decode_dicom(data, settings=S)
    np.testing.assert_array_equal(img.pixels, ref)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_pydicom_encoded_lossless(syntax: str) -> None:
    ds, ref = _reference()
    ds.compress(syntax)
    assert ds.file_meta.TransferSyntaxUID == syntax
    img = decode_dicom(to_bytes(ds), settings=S)
    assert img.meta["transfer_syntax"] == syntax.name
    np.testing.assert_array_equal(img.pixels, ref)


def test_jpeg2000_lossy() -> None:
    ds, ref = _reference()
    ds.compress(JPEG2000, j2k_psnr=[45])
    img = decode_dicom(to_bytes(ds), settings=S)
    assert img.meta["transfer_syntax"] == JPEG2000.name
    assert float(np.mean(np.abs(img.pixels - ref))) < 0.02


@pytest.mark.parametrize("syntax", ["jpeg_lossless", "jpeg_lossless_sv1", "jpeg_ls_lossless"])
def test_gdcm_lossless(syntax: str) -> None:
    ds, ref = _reference()
    packed = gdcm_compress(ds, syntax)
    assert packed.file_meta.TransferSyntaxUID.is_compressed
    img = decode_dicom(to_bytes(packed), settings=S)
    np.testing.assert_array_equal(img.pixels, ref)


def test_jpeg_baseline_8bit() -> None:
    ds, ref = _reference(bits=8)
    packed = jpeg_baseline(ds)
    img = decode_dicom(to_bytes(packed), settings=S)
    assert img.meta["transfer_syntax"] == "JPEG Baseline (Process 1)"
    assert float(np.mean(np.abs(img.pixels - ref))) < 0.02


def test_jpeg_extended_12bit_is_refused_as_unsupported() -> None:
    # Only the GPL libjpeg plugin decodes 12-bit lossy JPEG; we do not ship it. pydicom's own
    # test data has such a file (an NM image).
    data = Path(get_testdata_file("JPEG-lossy.dcm")).read_bytes()
    with pytest.raises(InputError) as err:
        decode_dicom(data, settings=Settings(allowed_modalities=["NM"]))
    assert err.value.code == "dicom_unsupported_transfer_syntax"



def test_bytes_after_the_deflated_stream_do_not_hang_the_check() -> None:
    """A deflated dataset with padding after its end was measured for ever (the inflater
    keeps trailing bytes as its unconsumed tail): one such upload hung an API thread."""
    ds = mr_dataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = to_bytes(ds) + b"\0\0"
    started = time.monotonic()
    try:
        decode_dicom(data, settings=S)
    except InputError as err:  # refusing it is fine; spinning is not
        assert err.http_status < 500
    assert time.monotonic() - started < 5
