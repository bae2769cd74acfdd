"""Where raw images come from: a folder, a zip or tar archive, Parquet files, or the demo set.

Each source yields `RawItem`s in a deterministic order. An item carries a key
(its stable name, used for the train/holdout split) and a picklable `payload`:
encoded bytes, or a zero-argument callable that a worker process calls to get
them (so folder files and demo images are read and drawn in parallel). Members
a source refuses outright (unsafe archive paths, archive bombs, links) come out
as `Refused` items so they are listed with their reason like any other skip.
"""

from __future__ import annotations

import functools
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Union

import pyarrow.parquet as pq
from PIL import Image

from ddpm.data.demo import draw_face
from ddpm.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# No face image needs more than this many bytes; a member claiming more, or
# expanding past it while read, is refused rather than read into memory.
MAX_MEMBER_BYTES = 64 * 2**20

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


def _refusal(name: str, declared_size: int, regular_file: bool = True) -> str | None:
    """Why an archive member is refused before reading it, or None if it may be read."""
    reason = _unsafe_member(name)
    if reason is None and not regular_file:
        reason = "refused: link or special file in archive"
    if reason is None and declared_size > MAX_MEMBER_BYTES:
        reason = (f"refused: declares {declared_size:,} bytes, over the "
                  f"{MAX_MEMBER_BYTES:,}-byte limit (archive bomb guard)")
    return reason


def _read_capped(stream, key: str) -> bytes | Refused:
    data = stream.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        return Refused(key, f"refused: expands past {MAX_MEMBER_BYTES:,} bytes (archive bomb guard)")
    return data


# ------------------------------------------------------------------ folder

def _read_file(path: str) -> bytes:
    return Path(path).read_bytes()


def folder_source(root: Path) -> Source:
    files = sorted((p for p in root.rglob("*") if p.is_file() and _is_image_name(p.name)),
                   key=lambda p: p.relative_to(root).as_posix())

    def items() -> Iterator[SourceItem]:
        for path in files:
            yield RawItem(path.relative_to(root).as_posix(),
                          functools.partial(_read_file, str(path)))

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
                except (zipfile.BadZipFile, OSError, EOFError) as err:
                    yield Refused(key, f"corrupt archive member ({err})")
                    continue
                yield data if isinstance(data, Refused) else RawItem(key, data)

    return Source("zip", len(members), items)


def tar_source(path: Path) -> Source:
    # Streamed in archive order (stable for a given archive), so memory stays
    # bounded and compressed archives are read once.
    def items() -> Iterator[SourceItem]:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not _is_image_name(member.name):
                    continue
                key = member.name
                reason = _refusal(key, member.size, member.isfile())
                if reason:
                    yield Refused(key, reason)
                    continue
                stream = archive.extractfile(member)
                data = _read_capped(stream, key)
                yield data if isinstance(data, Refused) else RawItem(key, data)

    return Source("tar", None, items)


# ------------------------------------------------------------------ parquet

def _image_column(schema, path: Path) -> str:
    """The column holding images: a struct {bytes, path} (Hugging Face style) or binary 'image'."""
    import pyarrow as pa

    for field in schema:
        if pa.types.is_struct(field.type) and field.type.get_field_index("bytes") >= 0:
            return field.name
    for field in schema:
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            return field.name
    raise DataError(f"{path}: no image column (expected a struct with 'bytes' and 'path', "
                    "or a binary column)")


def parquet_source(files: list[Path], root: Path) -> Source:
    columns = {f: _image_column(pq.read_schema(f), f) for f in files}
    count = sum(pq.ParquetFile(f).metadata.num_rows for f in files)

    def items() -> Iterator[SourceItem]:
        for file in files:
            name = file.relative_to(root).as_posix() if file != root else file.name
            row = 0
            for batch in pq.ParquetFile(file).iter_batches(columns=[columns[file]], batch_size=256):
                for value in batch.column(0).to_pylist():
                    if isinstance(value, dict):
                        data, member = value.get("bytes") or b"", value.get("path")
                    else:
                        data, member = value or b"", None
                    yield RawItem(f"{name}#{row}" + (f":{member}" if member else ""), data)
                    row += 1

    return Source("parquet", count, items)


# ------------------------------------------------------------------ demo

def demo_source(size: int, seed: int) -> Source:
    def items() -> Iterator[SourceItem]:
        for i in range(size):
            yield RawItem(f"demo/{i:06d}.png", functools.partial(draw_face, seed, i))

    return Source("demo", size, items)


# ------------------------------------------------------------------ dispatch

def open_source(source: str, *, demo_size: int, seed: int) -> Source:
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
            return parquet_source(parquet, path)
        raise DataError(f"data.source = {source!r}: folder holds no images "
                        f"({', '.join(IMAGE_SUFFIXES)}) and no Parquet files")
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            return zip_source(path)
        if name.endswith(TAR_SUFFIXES):
            return tar_source(path)
        if name.endswith(".parquet"):
            return parquet_source([path], path)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, ValueError) as err:
        # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"data.source = {source!r}: cannot read it ({err})") from None
    raise DataError(f"data.source = {source!r}: unknown file type; {hint}")
