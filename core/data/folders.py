"""Image folders, uploads, zips and the data roots a browser user may read.

* An image folder is ``<class>/<file>`` (files may sit deeper inside a class folder): PNG,
  JPEG, TIFF (8 or 16 bit), BMP and DICOM (``.dcm``, ``.dicom``, or no suffix with the
  DICOM marker). The class is the top folder's name.
* A server folder is only read inside the data roots: the workspace plus the folders
  listed in ``MEDAUG_DATA_ROOTS`` (separated by ``os.pathsep``). Anything else is refused,
  so a browser user cannot make the server read arbitrary files.
* A zip is checked before anything is written: absolute paths, ``..`` entries, symbolic
  links, encrypted entries, too many entries, a total uncompressed size over the limit, a
  member that inflates more than ``MAX_ZIP_RATIO`` times (a zip bomb), and a total that
  would not leave ``DISK_MARGIN_BYTES`` free on the disk each refuse the whole zip with the
  reason. The bytes written are counted again while extracting, so a zip that lies about
  its sizes is stopped too.
* Uploads are staged under ``workspace/uploads/`` for one import only:
  :func:`staged_upload` deletes them when the import finishes or fails.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from core.data.dicom import looks_like_dicom
from core.data.io import IMAGE_SUFFIXES
from core.data.sources import LoadProblem, SourceItem

ENV_DATA_ROOTS = "MEDAUG_DATA_ROOTS"
MAX_ZIP_BYTES = 4 * 1024**3       # total uncompressed size a zip may inflate to
MAX_ZIP_ENTRIES = 200_000
# One member may inflate at most this many times: PNG, JPEG, JPEG 2000 DICOM barely compress
# (~1:1), CSVs and raw 16-bit DICOM with dark borders reach ~10-30:1; zeros reach ~1000:1.
MAX_ZIP_RATIO = 100
RATIO_FLOOR_BYTES = 1 << 20       # members that inflate to less than this are not judged by ratio
DISK_MARGIN_BYTES = 1 << 30       # free disk left after extracting an upload
UPLOADS_DIR = "uploads"           # workspace folder where uploads wait for their import
STALE_UPLOAD_SECONDS = 24 * 3600  # staged uploads older than this (a server killed mid-import) are removed
_IGNORED = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|Thumbs\.db$|desktop\.ini$)")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class FolderAccessError(ValueError):
    """A server folder outside the allowed data roots, or not a folder."""


class ZipRefused(ValueError):
    """A zip that is unsafe to extract; the message gives the reason."""


# --- data roots ----------------------------------------------------------------------------

def allowed_data_roots() -> list[Path]:
    """The workspace, then each existing folder in ``MEDAUG_DATA_ROOTS``, resolved."""
    from core.workspace import workspace_root

    roots = [workspace_root()]
    for entry in os.environ.get(ENV_DATA_ROOTS, "").split(os.pathsep):
        if entry.strip():
            path = Path(entry.strip()).expanduser().resolve()
            if path.is_dir() and path not in roots:
                roots.append(path)
    return roots


def resolve_server_folder(path: str | Path,
                          how_to_allow: str = f"have the server started with {ENV_DATA_ROOTS} naming its parent "
                                              "folder") -> Path:
    """The folder, resolved (links followed), if it lies inside an allowed data root;
    otherwise FolderAccessError with a message that says how to allow it (``how_to_allow``:
    the page's way by default; the CLI names its own)."""
    text = str(path).strip()
    if not text:
        raise FolderAccessError("No folder given; enter a folder inside the data roots.")
    folder = Path(text).expanduser().resolve()
    roots = allowed_data_roots()
    if not any(folder == r or r in folder.parents for r in roots):
        raise FolderAccessError(
            f"{folder}: outside the allowed data roots ({', '.join(str(r) for r in roots)}); copy the data under "
            f"one of them, or {how_to_allow}.")
    if not folder.is_dir():
        raise FolderAccessError(f"{folder}: no such folder inside the data roots; check the path.")
    return folder


def dataset_name(text: str) -> str:
    """A safe folder name for a new dataset (letters, digits, ``._-``; up to 64)."""
    name = text.strip()
    if not _NAME.match(name):
        raise ValueError(f"name {text!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                         "or digit.")
    return name


# --- image folders -------------------------------------------------------------------------

def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or looks_like_dicom(path)


def scan_image_folder(root: str | Path) -> tuple[list[SourceItem], list[LoadProblem]]:
    """Index a ``<class>/<file>`` tree: one SourceItem per image file (its class as label,
    its own study), and a LoadProblem for files outside a class folder, files of other
    types, links leading out of the folder, and class folders without images."""
    root = Path(root).expanduser().resolve()
    items: list[SourceItem] = []
    problems: list[LoadProblem] = []
    used_ids: set[str] = set()
    for entry in sorted(root.iterdir()):
        rel = entry.relative_to(root).as_posix()
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if is_image_file(entry):
                problems.append(LoadProblem(rel, "scan", "the file is not inside a class folder",
                                            "move it into <class>/ so it gets a label"))
            continue
        if not entry.is_dir():
            continue
        found = 0
        for path in sorted(p for p in entry.rglob("*") if p.is_file() or p.is_symlink()):
            prel = path.relative_to(root).as_posix()
            if any(part.startswith(".") for part in path.relative_to(root).parts) or _IGNORED.search(prel):
                continue
            if root not in path.resolve().parents:
                problems.append(LoadProblem(prel, "scan", "is a link to a file outside the data folder",
                                            "copy the file in instead"))
                continue
            if not is_image_file(path):
                problems.append(LoadProblem(prel, "scan", f"not an image type ({path.suffix or 'no suffix'})",
                                            f"use PNG, JPEG, TIFF or DICOM ({', '.join(IMAGE_SUFFIXES)}, .dcm, .dicom)"))
                continue
            image_id = _unique_id(f"{entry.name}-{path.relative_to(entry).with_suffix('').as_posix()}", used_ids)
            items.append(SourceItem(image_id=image_id, file=str(path), labels=(entry.name,), study_id=image_id,
                                    where=prel))
            found += 1
        if not found:
            problems.append(LoadProblem(f"{rel}/", "scan", f"class folder '{entry.name}' has no images",
                                        "add images or remove the folder", "class skipped"))
    if not items:
        raise ValueError(f"{root}: no images in <class>/<file> folders; expected e.g. {root}/Osteophytes/img1.png.")
    return items, problems


def _unique_id(text: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}-{k}"
    used.add(name)
    return name


def detect_source(root: str | Path) -> str:
    """"vindr" for a VinDr-SpineXR layout, "phantom" for a MedAug dataset folder, else "folder"."""
    from core.data.vindr import is_vindr_folder

    root = Path(root)
    if is_vindr_folder(root):
        return "vindr"
    if (root / "dataset.json").is_file():
        return "phantom"
    return "folder"


def data_root_of(folder: Path) -> Path:
    """Descend through a single wrapping folder (``data.zip`` -> ``data/``) to the data itself."""
    folder = Path(folder)
    while True:
        entries = [e for e in folder.iterdir() if not e.name.startswith(".") and e.name != "__MACOSX"]
        if len(entries) == 1 and entries[0].is_dir() and detect_source(folder) == "folder" \
                and not any(p.is_file() for p in entries[0].iterdir()):
            folder = entries[0]
            continue
        return folder


# --- zips ----------------------------------------------------------------------------------

def check_zip(zf: zipfile.ZipFile, max_bytes: int = MAX_ZIP_BYTES, max_entries: int = MAX_ZIP_ENTRIES) -> list[zipfile.ZipInfo]:
    """The members to extract, or ZipRefused naming the first unsafe entry."""
    members = zf.infolist()
    if len(members) > max_entries:
        raise ZipRefused(f"the zip has {len(members):,} entries, over the limit of {max_entries:,}; split it.")
    total = 0
    keep = []
    for info in members:
        name = info.filename
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            raise ZipRefused(f"entry '{name}' has an absolute path; zip the folder with relative paths.")
        if ".." in PurePosixPath(name.replace("\\", "/")).parts:
            raise ZipRefused(f"entry '{name}' climbs out of the folder ('..' path traversal); rebuild the zip.")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ZipRefused(f"entry '{name}' is a symbolic link; zip the files themselves, not links.")
        if info.flag_bits & 0x1:
            raise ZipRefused(f"entry '{name}' is encrypted; zip it without a password.")
        total += info.file_size
        if total > max_bytes:
            raise ZipRefused(f"the zip inflates to more than {max_bytes / 1e6:,.0f} MB (uncompressed size limit) "
                             f"at entry '{name}'; upload a smaller zip or point to a server folder.")
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise ZipRefused(
                f"entry '{name}' inflates {info.file_size / max(info.compress_size, 1):,.0f}:1 "
                f"({info.compress_size / 1e3:,.0f} kB to {info.file_size / 1e6:,.0f} MB), over the limit of "
                f"{MAX_ZIP_RATIO}:1 for one file (a zip bomb, or a file that is almost empty); remove it from the "
                "zip, or if it is genuine add it uncompressed (zip -0) or copy the data to a server folder.")
        if not _IGNORED.search(name):
            keep.append(info)
    return keep


def extract_zip(source, dest: str | Path, max_bytes: int = MAX_ZIP_BYTES,
                max_entries: int = MAX_ZIP_ENTRIES) -> Path:
    """Check a zip (path or binary file object) with :func:`check_zip`, then extract it into
    the new folder ``dest``; return the folder holding the data. Nothing is left behind
    when the zip is refused."""
    dest = Path(dest)
    if dest.exists():
        raise ValueError(f"{dest}: already exists; extract into a new folder.")
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile as e:
        raise ZipRefused(f"not a readable zip file ({e}); create it again.") from e
    staging = dest.with_name(f".{dest.name}.extracting-{os.getpid()}")
    with zf:
        members = check_zip(zf, max_bytes, max_entries)
        check_free_space(dest, sum(info.file_size for info in members), "the zip", ZipRefused)
        shutil.rmtree(staging, ignore_errors=True)
        written = 0
        try:
            for info in members:
                target = staging.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                if info.is_dir():  # kept, so an empty class folder is reported rather than lost
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:  # the zip understated its sizes
                            raise ZipRefused(f"the zip inflates to more than {max_bytes / 1e6:,.0f} MB while "
                                             f"extracting '{info.filename}'; upload a smaller zip.")
                        out.write(chunk)
        except zipfile.BadZipFile as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise ZipRefused(f"the zip is damaged ({e}); create it again.") from e
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    staging.mkdir(parents=True, exist_ok=True)
    staging.rename(dest)
    return data_root_of(dest)


def check_free_space(dest: Path, needed: int, what: str, error: type[Exception] = ValueError) -> None:
    """Refuse (with ``error``) to write ``needed`` bytes under ``dest`` unless the disk keeps
    ``DISK_MARGIN_BYTES`` free afterwards."""
    probe = Path(dest).parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free - DISK_MARGIN_BYTES:
        raise error(f"{what} needs {needed / 1e6:,.0f} MB, but the server's disk has {free / 1e6:,.0f} MB free "
                    f"and keeps {DISK_MARGIN_BYTES / 2**30:.0f} GB spare; upload less at a time, or ask the "
                    "server's admin to free disk space.")


def save_uploads(files: Iterable[tuple[str, bytes]], dest: str | Path, class_name: str = "",
                 max_bytes: int = MAX_ZIP_BYTES) -> Path:
    """Store uploaded files in the new folder ``dest`` and return the folder holding the data.

    One ``.zip`` is checked and extracted (a ``<class>/<file>`` tree or a VinDr layout).
    Image files go to ``dest/<class_name>/<file name>`` (names are reduced to their last
    part, so an upload cannot write elsewhere)."""
    files = list(files)
    if not files:
        raise ValueError("No files uploaded; choose image files or one zip.")
    dest = Path(dest)
    zips = [f for f in files if f[0].lower().endswith(".zip")]
    if zips:
        if len(files) > 1:
            raise ValueError("Upload either one zip or image files, not both.")
        import io

        return extract_zip(io.BytesIO(zips[0][1]), dest, max_bytes=max_bytes)
    label = class_name.strip()
    if not label or label.startswith(".") or re.search(r"[/\\\x00]", label) or len(label) > 64:
        raise ValueError(f"class {class_name!r}: name the class of the uploaded images (1-64 characters, no "
                         "slashes, not starting with '.').")
    if sum(len(data) for _, data in files) > max_bytes:
        raise ValueError(f"The upload is larger than {max_bytes / 1e6:,.0f} MB; use a server folder instead.")
    if dest.exists():
        raise ValueError(f"{dest}: already exists; upload into a new folder.")
    check_free_space(dest, sum(len(data) for _, data in files), "the upload")
    staging = dest.with_name(f".{dest.name}.uploading-{os.getpid()}")
    try:
        (staging / label).mkdir(parents=True)
        used: set[str] = set()
        for name, data in files:
            base = PurePosixPath(name.replace("\\", "/")).name
            if not base or base.startswith("."):
                continue
            stem, suffix = os.path.splitext(base)
            safe = _unique_id(stem, used) + suffix.lower()
            (staging / label / safe).write_bytes(data)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


@contextmanager
def staged_upload(files: Iterable[tuple[str, bytes]], name: str, class_name: str = "",
                  max_bytes: int = MAX_ZIP_BYTES) -> Iterator[Path]:
    """Store uploads for one import (:func:`save_uploads` into a new folder under
    ``workspace/uploads/``) and yield the folder holding the data. The folder is deleted when
    the block ends, whether the import finished or failed; uploads that a killed server left
    behind for over ``STALE_UPLOAD_SECONDS`` are deleted on the way in.

        with staged_upload(files, "my-xrays") as root:
            prepare(PrepareConfig(source=detect_source(root), root=str(root), ...))
    """
    from core.workspace import workspace_dir

    base = workspace_dir(UPLOADS_DIR)
    remove_stale_uploads(base)
    dest = base / f"{dataset_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    try:
        yield save_uploads(files, dest, class_name, max_bytes=max_bytes)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def remove_stale_uploads(base: Path, max_age: float = STALE_UPLOAD_SECONDS) -> list[Path]:
    """Delete entries of the uploads folder ``base`` not modified for ``max_age`` seconds."""
    removed = []
    now = time.time()
    for entry in Path(base).iterdir():
        try:
            if now - entry.lstat().st_mtime > max_age:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                removed.append(entry)
        except OSError:  # removed meanwhile by another import, or not ours to remove
            continue
    return removed
