"""Reading DICOM radiographs: decode, rescale, window, and show the header with PHI masked.

The read path follows the standard display pipeline:
``pydicom.dcmread`` -> decode (pylibjpeg: JPEG 2000, JPEG-LS, JPEG Lossless; pydicom: RLE)
-> Modality LUT / rescale slope and intercept (``apply_modality_lut``)
-> VOI LUT or window centre/width (``apply_voi_lut``), or a percentile window
-> normalise to [0, 1] -> invert MONOCHROME1 (so bone is always bright) -> uint8 / uint16.

For integer data the whole chain is evaluated once per possible stored value (a lookup
table of at most 65,536 entries) and then indexed, which gives exactly the values of the
element-wise chain at a fraction of the cost.

VinDr-SpineXR files carry hashed (non-numeric) UIDs, which pydicom reports as invalid UI
values on every access. Those warnings, and only those, are silenced while reading.
Every problem is raised as :class:`core.data.io.ImageReadError` naming the file.
"""
from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.data.io import MAX_DECODE_PIXELS, ImageReadError

DICOM_SUFFIXES = (".dcm", ".dicom")
WINDOW_MODES = ("voi", "percentile", "none")
OUT_DTYPES = ("uint8", "uint16", "float32")
# Larger images are refused before decoding: the limit of every image reader (see core.data.io).
MAX_PIXELS = MAX_DECODE_PIXELS
# Header elements shown masked: identity, contact, institution and free-text fields.
PHI_KEYWORDS = frozenset({
    "PatientID", "OtherPatientIDs", "OtherPatientIDsSequence", "IssuerOfPatientID", "PatientAddress",
    "PatientTelephoneNumbers", "PatientBirthName", "PatientMotherBirthName", "MedicalRecordLocator",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "StationName",
    "DeviceSerialNumber", "StudyID", "RequestAttributesSequence", "AdditionalPatientHistory",
    "PatientComments", "ImageComments", "StudyDescription", "RequestedProcedureDescription",
    "Occupation", "MilitaryRank", "BranchOfService", "EthnicGroup", "CountryOfResidence",
    "RegionOfResidence", "PatientInsurancePlanCodeSequence", "PersonAddress", "PersonTelephoneNumbers",
})
# Whole value representations that identify people or moments: names, dates, times.
PHI_VRS = frozenset({"PN", "DA", "DT", "TM"})
MASK = "*** masked ***"

_UID_WARNING = re.compile(r"Invalid value for VR UI")
_TRUNCATED_WARNING = re.compile(r"End of file reached before delimiter")  # raised as an error instead
_SYNTHETIC_WORDS = re.compile(r"synthetic|phantom", re.IGNORECASE)


@dataclass(frozen=True)
class DicomReadOptions:
    """How stored values become display brightness."""

    window: str = "voi"                 # "voi": header VOI LUT or window (data range if absent);
                                        # "percentile": clip at `percentiles`; "none": full stored range
    percentiles: tuple[float, float] = (0.5, 99.5)  # low, high percentile for window="percentile", in [0, 100]
    out_dtype: str = "uint8"            # "uint8" or "uint16" (or "float32" in [0, 1] for resampling)
    decoding_plugin: str = ""           # "" = pylibjpeg where it applies, else pydicom's choice; or a plugin name

    def __post_init__(self):
        if self.window not in WINDOW_MODES:
            raise ValueError(f"window={self.window!r}: choose one of {', '.join(WINDOW_MODES)}.")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles={self.percentiles}: need 0 <= low < high <= 100.")
        if self.out_dtype not in OUT_DTYPES:
            raise ValueError(f"out_dtype={self.out_dtype!r}: choose one of {', '.join(OUT_DTYPES)}.")


@dataclass(eq=False)
class DicomImage:
    """One decoded radiograph."""

    pixels: np.ndarray          # (rows, cols) in the requested dtype; bright = dense, MONOCHROME1 inverted
    bits_stored: int            # bits per stored sample (8, 12, 16, ...)
    photometric: str            # PhotometricInterpretation as stored (MONOCHROME1/2, RGB, ...)
    transfer_syntax: str        # the transfer syntax's name, e.g. "JPEG 2000 Image Compression (Lossless Only)"
    window: str                 # how brightness was mapped, in words
    synthetic: bool             # the header marks the image as derived from a phantom / synthetic
    notes: list[str] = field(default_factory=list)  # conversions applied (colour to grey, first frame)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


class _DropHandledRecords(logging.Filter):
    """pydicom logs each warning as well: drop the log lines of the ones handled here."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (_UID_WARNING.search(message) or _TRUNCATED_WARNING.search(message))


@contextmanager
def quiet_uid_warnings() -> Iterator[None]:
    """Silence pydicom's "Invalid value for VR UI" warnings (and their log lines) inside the
    block: VinDr's hashed UIDs trigger them on every access. Other warnings pass through."""
    logger = logging.getLogger("pydicom")
    drop = _DropHandledRecords()
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_UID_WARNING.pattern)
            yield
    finally:
        logger.removeFilter(drop)


def is_dicom_file(path: str | Path) -> bool:
    """True when the file has the DICOM preamble marker ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def looks_like_dicom(path: str | Path) -> bool:
    """A DICOM by name (.dcm/.dicom) or, for files without a suffix, by content."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or (path.suffix == "" and is_dicom_file(path))


def _open(path: Path, stop_before_pixels: bool = False):
    """dcmread with the file's problems turned into ImageReadError messages."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise ImageReadError(f"{path}: file not found; check the path.")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes); copy or export it again.")
    try:
        with warnings.catch_warnings():
            # pydicom only warns when the pixel data stops early; a partial image is not usable
            warnings.filterwarnings("error", message=_TRUNCATED_WARNING.pattern)
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except UserWarning:
        raise ImageReadError(f"{path}: the file is truncated (its pixel data stops before the end marker); "
                             "copy it again.") from None
    except InvalidDicomError:
        raise ImageReadError(f"{path}: not a DICOM file (no 'DICM' marker at byte 128); remove it, or "
                             f"re-save it with a DICOM tool if it is a DICOM without a preamble.") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ImageReadError(f"{path}: the DICOM header cannot be parsed ({type(e).__name__}: {e}); "
                             f"the file is truncated or corrupt, copy it again.") from e


def _plugin_for(ds, requested: str) -> str:
    """The decoding plugin: the one asked for, else pylibjpeg wherever it can decode the syntax."""
    if requested:
        return requested
    from pydicom.pixels import get_decoder

    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None or not tsyntax.is_compressed:
        return ""
    try:
        return "pylibjpeg" if "pylibjpeg" in get_decoder(tsyntax).available_plugins else ""
    except NotImplementedError:
        return ""


def _stored_range(ds) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _modality_range(ds) -> tuple[float, float]:
    """The value range after the Modality LUT / rescale step, as pydicom's windowing assumes."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    lo, hi = _stored_range(ds)
    slope, icpt = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and icpt is not None:
        lo, hi = lo * float(slope) + float(icpt), hi * float(slope) + float(icpt)
    return float(min(lo, hi)), float(max(lo, hi))


def display_transform(ds, options: DicomReadOptions, sample: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """Return ``f(stored values) -> float64 brightness in [0, 1]`` and a description of the window.

    ``f`` is element-wise (so it can be evaluated once per stored value as a lookup table).
    ``sample`` is a subsample of the stored image for the percentile and data-range windows.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    invert = ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1"
    m_lo, m_hi = _modality_range(ds)
    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None

    if options.window == "voi" and (has_lut or has_window):
        if has_lut:
            out_lo, out_hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
            desc = "VOI LUT from the header"
        else:
            out_lo, out_hi = m_lo, m_hi
            c, w = ds.WindowCenter, ds.WindowWidth
            c = c[0] if getattr(ds["WindowCenter"], "VM", 1) > 1 else c
            w = w[0] if getattr(ds["WindowWidth"], "VM", 1) > 1 else w
            desc = f"window centre {float(c):g}, width {float(w):g} from the header"

        def voi(values: np.ndarray) -> np.ndarray:
            return apply_voi_lut(apply_modality_lut(values, ds), ds).astype(np.float64)
        lo, hi, curve = out_lo, out_hi, voi
    else:
        def modality(values: np.ndarray) -> np.ndarray:
            return np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
        curve = modality
        if options.window == "none":
            lo, hi, desc = m_lo, m_hi, "full stored range"
        else:
            p = options.percentiles if options.window == "percentile" else (0.0, 100.0)
            lo, hi = (float(v) for v in np.percentile(modality(sample), p))
            desc = (f"percentiles {p[0]:g}-{p[1]:g} ({lo:g} to {hi:g})" if options.window == "percentile"
                    else f"data range {lo:g} to {hi:g} (no window in the header)")
    span = hi - lo if hi > lo else 1.0

    def transform(values: np.ndarray) -> np.ndarray:
        unit = np.clip((curve(values) - lo) / span, 0.0, 1.0)
        return 1.0 - unit if invert else unit
    return transform, desc + (", MONOCHROME1 inverted" if invert else "")


def _to_dtype(unit: np.ndarray, out_dtype: str) -> np.ndarray:
    if out_dtype == "float32":
        return unit.astype(np.float32, copy=False)
    top = 255.0 if out_dtype == "uint8" else 65535.0
    return (unit * top + 0.5).astype(out_dtype)


def read_dicom(path: str | Path, options: DicomReadOptions | None = None) -> DicomImage:
    """Read one DICOM radiograph as a 2-D image (see the module docstring for the steps)."""
    from pydicom.pixels import pixel_array

    options = options or DicomReadOptions()
    path = Path(path)
    with quiet_uid_warnings():
        ds = _open(path)
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise ImageReadError(f"{path}: the DICOM has no pixel data (no PixelData element); it is not an "
                                 f"image (perhaps a report or structured data), remove it from the image set.")
        try:
            rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsStored)
        except (AttributeError, TypeError, ValueError) as e:
            raise ImageReadError(f"{path}: the image attributes are missing or invalid ({e}); "
                                 f"the file is not a usable image.") from e
        if rows * cols > MAX_PIXELS:
            raise ImageReadError(f"{path}: the image is too large to decode safely ({cols} x {rows} px, limit "
                                 f"{MAX_PIXELS:,} px); downscale it first.")
        tsyntax = ds.file_meta.get("TransferSyntaxUID")
        ts_name = tsyntax.name if tsyntax is not None else "unknown"
        _check_native_length(ds, path, tsyntax)
        try:
            arr = pixel_array(ds, decoding_plugin=_plugin_for(ds, options.decoding_plugin),
                              index=0 if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None)
        except (RuntimeError, NotImplementedError) as e:
            if "plugin" in str(e).lower() or "missing" in str(e).lower() or "no pixel data decoders" in str(e).lower():
                raise ImageReadError(f"{path}: no installed decoder handles its transfer syntax {ts_name} ({e}); "
                                     f"install pylibjpeg, pylibjpeg-openjpeg and pylibjpeg-libjpeg.") from e
            raise ImageReadError(f"{path}: the pixel data cannot be decoded ({ts_name}: {e}); the file is "
                                 f"probably truncated or corrupt, copy it again.") from e
        except (ValueError, EOFError, OSError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise ImageReadError(f"{path}: the pixel data cannot be decoded ({ts_name}: {e}); the file is "
                                 f"probably truncated or corrupt, copy it again.") from e
        notes: list[str] = []
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            notes.append(f"first of {int(ds.NumberOfFrames)} frames used")
        colour_bits = bits
        if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)  # indices -> RGB at the palette's bit depth
            colour_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        if arr.ndim == 3:  # colour (RGB after pydicom's YBR conversion): ITU-R 601 luminance
            notes.append(f"colour ({ds.get('PhotometricInterpretation', '?')}) converted to grey luminance")
            grey = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            pixels = _to_dtype(np.clip(grey / float(2**colour_bits - 1), 0.0, 1.0), options.out_dtype)
            desc = "full stored range (colour)"
        else:
            pixels, desc = _mono_pixels(arr, ds, options)
        derivation = f"{ds.get('DerivationDescription', '')} {' '.join(ds.get('ImageType', []) or [])}"
        return DicomImage(pixels=pixels, bits_stored=bits,
                          photometric=str(ds.get("PhotometricInterpretation", "")), transfer_syntax=ts_name,
                          window=desc, synthetic=bool(_SYNTHETIC_WORDS.search(derivation)), notes=notes)


def _check_native_length(ds, path: Path, tsyntax) -> None:
    """Refuse native (uncompressed) pixel data whose length does not match the header.

    pydicom reads whatever bytes are there: 16-bit data under BitsAllocated 8 would come
    back as extra frames or a "colour" image of the wrong shape. Compressed syntaxes hold
    encapsulated fragments, so only native data is checked. A few trailing bytes (less than
    one row: the padding to an even length, or a writer's slack) are tolerated."""
    if "PixelData" not in ds or (tsyntax is not None and tsyntax.is_compressed):
        return
    try:
        rows, cols, allocated = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return  # a missing attribute is reported by the decoder
    pixels = rows * cols * frames
    expected = (pixels * samples * allocated + 7) // 8
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422" and samples == 3:
        expected = expected * 2 // 3  # two chroma samples shared by each pair of pixels
    actual = len(ds.PixelData)
    if expected <= actual < expected + max(2, (cols * samples * allocated + 7) // 8):
        return
    sums = (f"Rows x Columns x Frames x Samples x BitsAllocated/8 = {rows} x {cols} x {frames} x {samples} x "
            f"{allocated}/8 = {expected:,}")
    bits = actual * 8 // (pixels * samples) if pixels and actual * 8 % (pixels * samples) == 0 else 0
    hint = f" ({bits} bits per sample, not {allocated})" if bits in (1, 8, 16, 32, 64) else ""
    if actual < expected:
        raise ImageReadError(f"{path}: the pixel data is shorter than the header says: it holds {actual:,} bytes but "
                             f"{sums}{hint}; the file is truncated or its header is wrong, copy or export it again.")
    raise ImageReadError(f"{path}: the header does not match the pixels: the pixel data holds {actual:,} bytes but "
                         f"{sums}{hint}; export the file again.")


def _mono_pixels(arr: np.ndarray, ds, options: DicomReadOptions) -> tuple[np.ndarray, str]:
    step = max(1, int(np.sqrt(arr.size / 250_000)))  # ~250k samples for percentile windows
    transform, desc = display_transform(ds, options, arr[::step, ::step])
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo < 65536:
            # the element-wise chain evaluated once per stored value, then indexed: identical values
            lut = _to_dtype(transform(np.arange(lo, hi + 1, dtype=arr.dtype)), options.out_dtype)
            return lut[arr if lo == 0 else arr.astype(np.int32) - lo], desc
    return _to_dtype(transform(arr), options.out_dtype), desc


def dicom_header(path: str | Path, masked: bool = True) -> list[dict]:
    """The header as rows ``{tag, keyword, vr, value}``, pixel data left out. With ``masked``,
    names, dates, times, identifiers, addresses, institutions and private tags read ``MASK``."""
    path = Path(path)
    rows = []
    with quiet_uid_warnings():
        ds = _open(path, stop_before_pixels=True)
        for elem in [*ds.file_meta, *ds]:
            rows.append(_header_row(elem, masked))
    return rows


def _header_row(elem, masked: bool) -> dict:
    keyword = elem.keyword or ("(private)" if elem.tag.is_private else "(unknown)")
    hide = masked and (elem.VR in PHI_VRS or elem.keyword in PHI_KEYWORDS or elem.tag.is_private)
    if hide and elem.value not in (None, "", b""):
        value = MASK
    elif elem.VR == "SQ":
        value = f"sequence of {len(elem.value)} item(s)"
    elif isinstance(elem.value, bytes):
        value = f"{len(elem.value)} bytes"
    else:
        value = str(elem.value)
        value = value if len(value) <= 120 else value[:117] + "..."
    return {"tag": f"({elem.tag.group:04X},{elem.tag.element:04X})", "keyword": keyword, "vr": elem.VR,
            "value": value}
