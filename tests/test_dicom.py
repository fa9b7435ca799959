"""DICOM read path: rescale, VOI LUT / window, percentile window, MONOCHROME1, bit depths,
output types, the four lossless codecs, UID-warning silencing, readable errors, PHI masking."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from core.data.dicom import MASK, DicomReadOptions, dicom_header, display_transform, quiet_uid_warnings, read_dicom
from core.data.io import ImageReadError


def grey_dx(rows: int, cols: int, photometric: str = "MONOCHROME2") -> Dataset:
    """The header of a native single-frame grey DX image (file meta, UIDs, size), without pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, photometric
    return ds


def make_dicom(path: Path, stored: np.ndarray, bits: int, photometric: str = "MONOCHROME2", signed: bool = False,
               **attrs) -> Path:
    """A native (uncompressed) single-frame grey DICOM holding ``stored``."""
    ds = grey_dx(*stored.shape, photometric)
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    for key, value in attrs.items():
        setattr(ds, key, value)
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(ds.BitsAllocated, signed)]
    ds.PixelData = stored.astype(dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(bits: int, shape=(64, 64)) -> np.ndarray:
    """Every stored value of ``bits`` bits, spread over the image."""
    n = shape[0] * shape[1]
    return (np.arange(n) * (2**bits - 1) // (n - 1)).reshape(shape)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_bit_depths_map_the_full_stored_range_to_the_output_type(tmp_path, bits):
    stored = ramp(bits)
    path = make_dicom(tmp_path / f"b{bits}.dcm", stored, bits)
    for dtype, top in (("uint8", 255), ("uint16", 65535)):
        im = read_dicom(path, DicomReadOptions(window="none", out_dtype=dtype))
        assert im.pixels.dtype == np.dtype(dtype) and im.pixels.shape == stored.shape
        assert im.bits_stored == bits
        assert im.pixels.min() == 0 and im.pixels.max() == top
        expected = np.floor(stored / (2**bits - 1) * top + 0.5)
        assert np.abs(im.pixels.astype(np.int64) - expected).max() == 0


def test_rescale_then_window_from_the_header_follows_the_dicom_formula(tmp_path):
    stored = ramp(12)
    slope, intercept, center, width = 2.0, -1024.0, 1000.0, 2000.0
    path = make_dicom(tmp_path / "w.dcm", stored, 12, RescaleSlope=slope, RescaleIntercept=intercept,
                      WindowCenter=center, WindowWidth=width)
    im = read_dicom(path, DicomReadOptions(out_dtype="uint16"))
    x = stored * slope + intercept
    # PS3.3 C.11.2.1.2.1 (LINEAR), normalised to [0, 1]
    unit = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    assert np.abs(im.pixels.astype(np.int64) - np.floor(unit * 65535 + 0.5)).max() <= 1
    assert "window centre 1000" in im.window
    assert (im.pixels == 0).sum() > 100 and (im.pixels == 65535).sum() > 100  # both ends clipped


def test_voi_lut_sequence_is_applied(tmp_path):
    stored = ramp(8)
    item = Dataset()
    lut = (np.arange(128) ** 2 // 127).astype(np.uint16)  # a curve over values 64..191, 14-bit output
    item.add_new(0x00283002, "US", [128, 64, 14])  # LUT Descriptor: entries, first mapped value, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    path = make_dicom(tmp_path / "lut.dcm", stored, 8, VOILUTSequence=[item])
    im = read_dicom(path, DicomReadOptions(out_dtype="uint16"))
    expected = lut[np.clip(stored - 64, 0, 127)] / (2**14 - 1)
    assert np.abs(im.pixels.astype(np.int64) - np.floor(expected * 65535 + 0.5)).max() <= 1
    assert im.window == "VOI LUT from the header"


def test_monochrome1_is_inverted(tmp_path):
    stored = ramp(12)
    mono2 = read_dicom(make_dicom(tmp_path / "m2.dcm", stored, 12, "MONOCHROME2"))
    mono1 = read_dicom(make_dicom(tmp_path / "m1.dcm", stored, 12, "MONOCHROME1"))
    assert np.array_equal(mono1.pixels.astype(int), 255 - mono2.pixels.astype(int))
    assert "MONOCHROME1 inverted" in mono1.window and mono1.photometric == "MONOCHROME1"


def test_percentile_window_clips_outliers(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(1000, 2001, size=(100, 100))
    stored[0, :20], stored[1, :20] = 0, 4095  # a few outliers at both ends
    path = make_dicom(tmp_path / "p.dcm", stored, 12)
    full = read_dicom(path, DicomReadOptions(window="none")).pixels
    pct = read_dicom(path, DicomReadOptions(window="percentile", percentiles=(1.0, 99.0))).pixels
    body = np.s_[2:, :]
    assert int(pct[body].max()) - int(pct[body].min()) > 240  # the body spans the whole output
    assert int(full[body].max()) - int(full[body].min()) < 70  # the full range squeezes it
    assert pct[0, :20].max() == 0 and pct[1, :20].min() == 255
    # a header without a window falls back to the data range
    assert "data range" in read_dicom(path).window


def test_lookup_table_equals_the_elementwise_chain_on_signed_rescaled_data():
    path = get_testdata_file("CT_small.dcm")  # signed 16-bit with rescale, shipped with pydicom
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    for options in (DicomReadOptions(window="none", out_dtype="float32"),
                    DicomReadOptions(window="percentile", out_dtype="float32")):
        transform, _ = display_transform(ds, options, arr)
        assert np.array_equal(read_dicom(path, options).pixels, transform(arr).astype(np.float32))


def _encoded(tmp_path: Path, syntax, name: str) -> tuple[Path, np.ndarray]:
    stored = (np.random.default_rng(1).integers(0, 4096, size=(48, 40))).astype(np.uint16)
    path = make_dicom(tmp_path / f"{name}.dcm", stored, 12)
    ds = pydicom.dcmread(path)
    ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "pydicom",
                generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return path, stored


def _counts(im, bits=12) -> np.ndarray:
    return np.round(im.pixels.astype(np.float64) / 65535 * (2**bits - 1)).astype(np.int64)


@pytest.mark.parametrize("syntax,name", [(JPEG2000Lossless, "j2k"), (RLELossless, "rle")])
def test_codecs_we_encode_decode_losslessly(tmp_path, syntax, name):
    path, stored = _encoded(tmp_path, syntax, name)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    im = read_dicom(path, DicomReadOptions(window="none", out_dtype="uint16"))
    assert np.array_equal(_counts(im), stored)
    assert im.transfer_syntax == syntax.name


@pytest.mark.parametrize("encoded,reference,syntax_word", [
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", "JPEG-LS Lossless"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", "JPEG 2000"),
    ("MR_small_RLE.dcm", "MR_small.dcm", "RLE Lossless"),
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", "JPEG Lossless, Non-Hierarchical, First-Order"),
])
def test_codecs_pydicom_cannot_encode_decode_from_its_bundled_files(encoded, reference, syntax_word):
    """pydicom cannot encode JPEG-LS (needs pyjpegls) or JPEG Lossless: use the small files it ships."""
    options = DicomReadOptions(window="none", out_dtype="uint16")
    got = read_dicom(get_testdata_file(encoded), options)
    want = read_dicom(get_testdata_file(reference), options)
    assert syntax_word in got.transfer_syntax
    assert np.array_equal(got.pixels, want.pixels) and got.pixels.std() > 0


def _hashed_uid_file(path: Path) -> Path:
    from core.data.vindr_export import write_vindr_dicom

    counts = ramp(12, (64, 48)).astype(np.uint16)
    write_vindr_dicom(path, counts, False, {"image": "a" * 32, "study": "b" * 32, "series": "c" * 32}, "test")
    return path


def test_uid_warnings_are_silenced_for_reading_only(tmp_path):
    path = _hashed_uid_file(tmp_path / "hashed.dicom")
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(path)
        _ = ds.pixel_array, ds.StudyInstanceUID  # plain pydicom does warn about the hashed UIDs
    assert any("Invalid value for VR UI" in str(w.message) for w in raw)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        read_dicom(path)
        dicom_header(path)
    assert [str(w.message) for w in ours] == []
    with warnings.catch_warnings(record=True) as other:  # any other warning still gets through
        warnings.simplefilter("always")
        with quiet_uid_warnings():
            warnings.warn("something real")
    assert [str(w.message) for w in other] == ["something real"]


def test_bad_dicoms_raise_errors_that_name_the_file(tmp_path):
    good = make_dicom(tmp_path / "good.dcm", ramp(12), 12)
    data = good.read_bytes()
    cases = {}
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) // 2])
    cases["truncated.dcm"] = "truncated"
    ds = pydicom.dcmread(good)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm", enforce_file_format=True)
    cases["nopixels.dcm"] = "no pixel data"
    (tmp_path / "text.dicom").write_text("study_id,image_id\n1,2\n")
    cases["text.dicom"] = "not a DICOM file"
    (tmp_path / "empty.dicom").write_bytes(b"")
    cases["empty.dicom"] = "empty (0 bytes)"
    ds = pydicom.dcmread(good)
    ds.Rows, ds.Columns = 20000, 20000
    ds.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    cases["huge.dcm"] = "too large"
    for name, phrase in cases.items():
        with pytest.raises(ImageReadError) as err:
            read_dicom(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and phrase in str(err.value), str(err.value)


def test_header_masks_phi(tmp_path):
    path = make_dicom(tmp_path / "phi.dcm", ramp(8), 8, PatientName="Doe^Jane", PatientID="MRN-1234",
                      PatientBirthDate="19700101", StudyDate="20240101", InstitutionName="General Hospital",
                      AccessionNumber="ACC99", BodyPartExamined="LSPINE")
    ds = pydicom.dcmread(path)
    ds.private_block(0x0011, "ACME", create=True).add_new(0x01, "LO", "secret note")
    ds.save_as(path, enforce_file_format=True)
    rows = {r["keyword"]: r["value"] for r in dicom_header(path)}
    text = " ".join(r["value"] for r in dicom_header(path))
    for secret in ("Doe^Jane", "MRN-1234", "19700101", "20240101", "General Hospital", "ACC99", "secret note"):
        assert secret not in text
    assert rows["PatientName"] == MASK and rows["InstitutionName"] == MASK
    assert rows["BodyPartExamined"] == "LSPINE" and rows["Modality"] == "DX" and rows["BitsStored"] == "8"
    assert "PixelData" not in rows
    unmasked = {r["keyword"]: r["value"] for r in dicom_header(path, masked=False)}
    assert unmasked["PatientName"] == "Doe^Jane"


def test_read_options_are_validated():
    with pytest.raises(ValueError, match="window"):
        DicomReadOptions(window="auto")
    with pytest.raises(ValueError, match="percentiles"):
        DicomReadOptions(percentiles=(99.0, 1.0))
    with pytest.raises(ValueError, match="out_dtype"):
        DicomReadOptions(out_dtype="int8")
