"""Where raw images come from: a folder, a zip or tar archive, Parquet files, or the demo set.

Each source yields `RawItem`s in a deterministic order. An item carries a key
(its stable name, used for the train/holdout split) and a picklable `payload`:
encoded bytes, or a zero-argument callable that a worker process calls to get
them (so folder files and demo images are read and drawn in parallel). Members
a source refuses outright (unsafe archive paths, archive bombs, links) come out
as `Refused` items so they are listed with their reason like any other skip, and
so does the part of a source that is damaged (a corrupt archive stream, an
unreadable Parquet file or row group, a file name that is not UTF-8): the
rest of the source is still used.
"""

from __future__ import annotations

import functools
import io
import lzma
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Union

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ddpm.data.demo import draw_face
from ddpm.data.images import UnusableImage
from ddpm.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# No face image needs more than this many bytes. One limit for every source: an
# archive member, folder file or Parquet cell claiming more, or growing past it
# while read, is refused rather than read into memory.
MAX_IMAGE_BYTES = 64 * 2**20
# What a damaged compressed stream raises while an archive is read.
STREAM_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error,
                 lzma.LZMAError)
# What pyarrow raises on a damaged Parquet file (ArrowInvalid is also a ValueError,
# a corrupt compressed page an OSError).
PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError)

Payload = Union[bytes, Callable[[], Union[bytes, Image.Image]]]


@dataclass(frozen=True)
class RawItem:
    key: str
    payload: Payload


@dataclass(frozen=True)
class Refused:
    key: str
    reason: str


SourceItem = Union[RawItem, Refused]


@dataclass(frozen=True)
class Source:
    """An opened source: its kind, how many items it will yield (if known), the items."""
    kind: str
    count: int | None
    items: Callable[[], Iterator[SourceItem]]


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _unsafe_member(name: str) -> str | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "refused: absolute path in archive"
    if ".." in path.parts:
        return "refused: '..' in archive path"
    return None


def _not_utf8(key: str) -> Refused | None:
    """A Refused for a name that is not valid UTF-8, or None.

    The OS and tarfile hand such names over with lone surrogates, which cannot
    be hashed, stored or printed; the listing shows the raw bytes as escapes.
    """
    try:
        key.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    try:
        raw = key.encode("utf-8", "surrogateescape")  # the bytes the OS gave
    except UnicodeEncodeError:
        raw = key.encode("utf-8", "backslashreplace")
    return Refused(raw.decode("utf-8", "backslashreplace"),
                   "file name is not valid UTF-8; rename it")


def _refusal(name: str, declared_size: int, regular_file: bool = True) -> str | None:
    """Why an archive member is refused before reading it, or None if it may be read."""
    reason = _unsafe_member(name)
    if reason is None and not regular_file:
        reason = "refused: link or special file in archive"
    if reason is None and declared_size > MAX_IMAGE_BYTES:
        reason = (f"refused: declares {declared_size:,} bytes, over the "
                  f"{MAX_IMAGE_BYTES:,}-byte limit (archive bomb guard)")
    return reason


def _read_capped(stream, key: str) -> bytes | Refused:
    data = stream.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        return Refused(key, f"refused: expands past {MAX_IMAGE_BYTES:,} bytes (archive bomb guard)")
    return data


# ------------------------------------------------------------------ folder

def _too_big(size: int) -> str:
    return f"refused: {size:,} bytes, over the {MAX_IMAGE_BYTES:,}-byte limit for one image"


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_IMAGE_BYTES + 1)  # never more, whatever the file claims
    if len(data) > MAX_IMAGE_BYTES:
        raise UnusableImage(_too_big(Path(path).stat().st_size))
    return data


def folder_source(root: Path) -> Source:
    files = sorted((p for p in root.rglob("*") if p.is_file() and _is_image_name(p.name)),
                   key=lambda p: p.relative_to(root).as_posix())

    def items() -> Iterator[SourceItem]:
        for path in files:
            key = path.relative_to(root).as_posix()
            refused = _not_utf8(key)
            if refused is None and path.stat().st_size > MAX_IMAGE_BYTES:
                refused = Refused(key, _too_big(path.stat().st_size))
            yield refused or RawItem(key, functools.partial(_read_file, str(path)))

    return Source("folder", len(files), items)


# ------------------------------------------------------------------ archives

def zip_source(path: Path) -> Source:
    with zipfile.ZipFile(path) as archive:
        members = sorted((m for m in archive.infolist()
                          if not m.is_dir() and _is_image_name(m.filename)),
                         key=lambda m: m.filename)

    def items() -> Iterator[SourceItem]:
        with zipfile.ZipFile(path) as archive:
            for member in members:
                key = member.filename
                reason = _refusal(key, member.file_size)
                if reason:
                    yield Refused(key, reason)
                    continue
                try:
                    with archive.open(member) as stream:
                        data = _read_capped(stream, key)
                except STREAM_ERRORS as err:
                    yield Refused(key, f"corrupt archive member ({err})")
                    continue
                yield data if isinstance(data, Refused) else RawItem(key, data)

    return Source("zip", len(members), items)


def tar_source(path: Path) -> Source:
    # Streamed in archive order (stable for a given archive), so memory stays
    # bounded and compressed archives are read once. A damaged stream ends the
    # archive there: what was read before it is kept, the rest listed as refused.
    def items() -> Iterator[SourceItem]:
        last, reading = None, None
        try:
            with tarfile.open(path, mode="r|*") as archive:
                for member in archive:
                    if not _is_image_name(member.name):
                        continue
                    key = member.name
                    reason = _refusal(key, member.size, member.isfile())
                    refused = _not_utf8(key) or (Refused(key, reason) if reason else None)
                    if refused:
                        yield refused
                        continue
                    reading = key
                    data = _read_capped(archive.extractfile(member), key)
                    reading, last = None, key
                    yield data if isinstance(data, Refused) else RawItem(key, data)
        except STREAM_ERRORS as err:
            where = f"after {last}" if last else "from its start"
            yield Refused(reading or f"{path.name} ({where})",
                          f"corrupt archive: unreadable from here on ({_error_text(err)})")

    return Source("tar", None, items)


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


# ------------------------------------------------------------------ parquet

def _image_candidates(schema: pa.Schema) -> list[str]:
    """Columns that can hold encoded images: {bytes, path} structs (Hugging Face) first."""
    structs = [f.name for f in schema
               if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0]
    binaries = [f.name for f in schema
                if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    return structs + binaries


def _cell_bytes(value) -> bytes:
    return (value.get("bytes") if isinstance(value, dict) else value) or b""


def _decodes(parquet: pq.ParquetFile, column: str, rows: int = 8) -> bool:
    """Whether one of the column's first `rows` values opens as an image (header only)."""
    try:
        batch = next(parquet.iter_batches(batch_size=rows, columns=[column]), None)
    except PARQUET_ERRORS:
        return False
    for value in batch.column(0).to_pylist() if batch is not None else []:
        try:
            with Image.open(io.BytesIO(_cell_bytes(value))):
                return True
        except Exception:  # noqa: BLE001 - any failure means "not an image"
            continue
    return False


def _image_column(parquet: pq.ParquetFile, wanted: str) -> str:
    """`wanted` (data.image_column) or the first candidate column that holds images."""
    candidates = _image_candidates(parquet.schema_arrow)
    if wanted:
        if wanted not in candidates:
            raise DataError(f"no column {wanted!r} of image bytes (data.image_column); "
                            f"candidates: {', '.join(candidates) or 'none'}")
        return wanted
    if not candidates:
        raise DataError("no image column (expected a struct with 'bytes' and 'path', or a "
                        "binary column)")
    # A hash or thumbnail-id column may come first: prefer one whose values open as images.
    return next((c for c in candidates if _decodes(parquet, c)), candidates[0])


def _parquet_item(name: str, row: int, value) -> SourceItem:
    member = value.get("path") if isinstance(value, dict) else None
    key = f"{name}#{row}" + (f":{member}" if member else "")
    data = _cell_bytes(value)
    return Refused(key, _too_big(len(data))) if len(data) > MAX_IMAGE_BYTES else RawItem(key, data)


def _parquet_rows(file: Path, name: str, column: str) -> Iterator[SourceItem]:
    """Every row of `column`, row group by row group; a damaged group is listed, not fatal."""
    parquet = pq.ParquetFile(file)
    start = 0
    for group in range(parquet.num_row_groups):
        end, row = start + parquet.metadata.row_group(group).num_rows, start
        try:
            for batch in parquet.iter_batches(batch_size=256, row_groups=[group],
                                              columns=[column]):
                for value in batch.column(0).to_pylist():
                    yield _parquet_item(name, row, value)
                    row += 1
        except PARQUET_ERRORS as err:
            yield Refused(f"{name}#{row}-{end - 1}",
                          f"corrupt Parquet data, rows skipped ({_error_text(err)})")
        start = end


def parquet_source(files: list[Path], root: Path, image_column: str = "") -> Source:
    readable: dict[Path, str] = {}  # file -> its image column
    refused: list[Refused] = []
    count = 0
    for file in files:
        name = file.relative_to(root).as_posix() if file != root else file.name
        try:
            parquet = pq.ParquetFile(file)
            readable[file] = _image_column(parquet, image_column)
            count += parquet.metadata.num_rows
        except DataError as err:
            refused.append(Refused(name, str(err)))
        except PARQUET_ERRORS as err:
            refused.append(Refused(name, f"not a readable Parquet file ({_error_text(err)})"))

    def items() -> Iterator[SourceItem]:
        yield from refused
        for file, column in readable.items():
            name = file.relative_to(root).as_posix() if file != root else file.name
            yield from _parquet_rows(file, name, column)

    return Source("parquet", count + len(refused), items)


# ------------------------------------------------------------------ demo

def demo_source(size: int, seed: int) -> Source:
    def items() -> Iterator[SourceItem]:
        for i in range(size):
            yield RawItem(f"demo/{i:06d}.png", functools.partial(draw_face, seed, i))

    return Source("demo", size, items)


# ------------------------------------------------------------------ dispatch

def open_source(source: str, *, demo_size: int, seed: int, image_column: str = "") -> Source:
    """Open `data.source`: 'demo', a folder, a zip/tar archive, or Parquet file(s)."""
    if source == "demo":
        return demo_source(demo_size, seed)
    path = Path(source)
    hint = "give a folder of images, a .zip or .tar archive, Parquet file(s), or 'demo'"
    if not path.exists():
        raise DataError(f"data.source = {source!r}: no such file or folder; {hint}")
    if path.is_dir():
        folder = folder_source(path)
        if folder.count:
            return folder
        parquet = sorted(path.rglob("*.parquet"))
        if parquet:
            return parquet_source(parquet, path, image_column)
        raise DataError(f"data.source = {source!r}: folder holds no images "
                        f"({', '.join(IMAGE_SUFFIXES)}) and no Parquet files")
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            return zip_source(path)
        if name.endswith(TAR_SUFFIXES):
            return tar_source(path)
        if name.endswith(".parquet"):
            return parquet_source([path], path, image_column)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, ValueError) as err:
        # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"data.source = {source!r}: cannot read it ({err})") from None
    raise DataError(f"data.source = {source!r}: unknown file type; {hint}")
