"""The prepare step: every source kind, every bad-input kind, split stability, byte-identical reruns."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import tiny
from ddpm.data import images as images_module
from ddpm.data import sources as sources_module
from ddpm.data.config import DataConfig
from ddpm.data.images import CELEBA_BOX, crop_box
from ddpm.data.prepare import prepare_dataset
from ddpm.data.splits import in_holdout
from ddpm.errors import DataError

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "faces-a"


def photo(seed: int, size=(60, 50), mode="RGB") -> Image.Image:
    """A random-noise RGB picture; different seeds give different images."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def config(source, **kwargs) -> DataConfig:
    return replace(DataConfig(source=str(source), workers=1), **kwargs)


def read_split(out: Path, split: str) -> dict[str, bytes]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows = {}
    for shard in manifest["shards"][split]:
        table = pq.read_table(out / shard)
        rows.update(zip(table["key"].to_pylist(), table["image"].to_pylist()))
    return rows


def all_images(out: Path) -> dict[str, Image.Image]:
    rows = {**read_split(out, "train"), **read_split(out, "holdout")}
    return {k: Image.open(io.BytesIO(v)) for k, v in rows.items()}


def make_folder(root: Path, n: int = 6) -> Path:
    formats = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("bmp", "BMP"), ("jpeg", "JPEG")]
    for i in range(n):
        suffix, fmt = formats[i % len(formats)]
        sub = root / ("nested/deeper" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:03d}.{suffix.upper() if i == 4 else suffix}").write_bytes(
            encoded(photo(i), fmt))
    (root / "notes.txt").write_text("not an image, not an image suffix: ignored")
    return root


# ------------------------------------------------------------------ sources


def test_folder_source_is_recursive_and_reads_every_format(tmp_path):
    src = make_folder(tmp_path / "src", n=10)
    manifest = prepare_dataset(config(src), 16, tmp_path / "out", progress=False)
    got = all_images(tmp_path / "out")
    assert len(got) == 10 and manifest["skipped"] == []
    assert {"nested/deeper/img001.png", "img002.webp", "nested/deeper/img003.bmp", "img004.JPEG"} <= set(got)
    assert all(im.size == (16, 16) and im.mode == "RGB" for im in got.values())
    assert sum(manifest["counts"].values()) == 10


def test_zip_tar_and_folder_give_the_same_images(tmp_path):
    src = make_folder(tmp_path / "src", n=8)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        for f in files:
            archive.write(f, f.relative_to(src).as_posix())
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as archive:
        for f in files:
            archive.add(f, f.relative_to(src).as_posix())
    results = {}
    for name in ("src", "a.zip", "a.tar.gz"):
        prepare_dataset(config(tmp_path / name), 16, tmp_path / f"out-{name}", progress=False)
        results[name] = {k: v.tobytes() for k, v in all_images(tmp_path / f"out-{name}").items()}
    assert len(results["src"]) == 8
    assert results["src"] == results["a.zip"] == results["a.tar.gz"]


def test_parquet_source_with_bytes_path_struct(tmp_path):
    rows = [{"bytes": encoded(photo(i), "PNG"), "path": f"{i:06d}.png"} for i in range(5)]
    table = pa.table({"image": rows, "label": list(range(5))})
    folder = tmp_path / "pq" / "data"
    folder.mkdir(parents=True)
    pq.write_table(table.slice(0, 3), folder / "train-0.parquet")
    pq.write_table(table.slice(3), folder / "train-1.parquet")
    prepare_dataset(config(tmp_path / "pq"), 16, tmp_path / "out", progress=False)
    got = all_images(tmp_path / "out")
    assert len(got) == 5
    assert "data/train-1.parquet#0:000003.png" in got
    single = prepare_dataset(config(folder / "train-0.parquet"), 16, tmp_path / "out1",
                             progress=False)
    assert sum(single["counts"].values()) == 3


def test_demo_source_is_deterministic_and_seeded(tmp_path):
    a = prepare_dataset(config("demo", demo_size=40), 32, tmp_path / "a", progress=False)
    b = prepare_dataset(config("demo", demo_size=40), 32, tmp_path / "b", progress=False)
    c = prepare_dataset(config("demo", demo_size=40, seed=1), 32, tmp_path / "c", progress=False)
    assert sum(a["counts"].values()) == 40
    assert a["content_sha256"] == b["content_sha256"] != c["content_sha256"]


# ------------------------------------------------------------------ bad input


def bad_folder(root: Path) -> dict[str, str]:
    """Good, convertible and unusable files; returns {name: expected reason fragment}."""
    root.mkdir()
    for i in range(4):
        (root / f"good{i}.jpg").write_bytes(encoded(photo(i), "JPEG"))
    (root / "cmyk.jpg").write_bytes(encoded(photo(10).convert("CMYK"), "JPEG"))
    (root / "rgba.png").write_bytes(encoded(photo(11).convert("RGBA"), "PNG"))
    (root / "la.png").write_bytes(encoded(photo(12).convert("LA"), "PNG"))
    (root / "palette.png").write_bytes(encoded(photo(13).convert("P"), "PNG"))
    sixteen = Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16))
    (root / "gray16.png").write_bytes(encoded(sixteen, "PNG"))
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is a text file renamed to .jpg\n")
    damaged = bytearray(encoded(photo(14), "PNG"))
    idat = damaged.index(b"IDAT")
    damaged[idat + 40: idat + 80] = bytes(40)            # zero part of the compressed pixels
    (root / "corrupt.png").write_bytes(bytes(damaged))
    whole = encoded(photo(20, size=(200, 200)), "JPEG")
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "tiny.png").write_bytes(encoded(photo(21, size=(8, 8)), "PNG"))
    return {"zero.jpg": "empty file", "text.jpg": "not an image", "corrupt.png": "corrupt",
            "truncated.jpg": "truncated", "tiny.png": "too small"}


def test_bad_files_are_skipped_with_reasons_and_convertible_modes_kept(tmp_path):
    expected = bad_folder(tmp_path / "src")
    manifest = prepare_dataset(config(tmp_path / "src"), 16, tmp_path / "out", progress=False)
    reasons = {s["key"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons[name])
    got = all_images(tmp_path / "out")
    assert {"good0.jpg", "cmyk.jpg", "rgba.png", "la.png", "palette.png", "gray16.png"} <= set(got)
    assert all(im.mode == "RGB" for im in got.values())
    # 16-bit white must stay white, not be clipped or wrapped to another value.
    assert np.asarray(got["gray16.png"]).min() == 255


def test_alpha_is_composited_onto_white_and_exif_rotation_applied():
    transparent = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    out = images_module.prepare_image(encoded(transparent, "PNG"), "none", 8, 1)
    assert np.asarray(Image.open(io.BytesIO(out))).min() == 255
    wide = Image.new("RGB", (60, 30), (0, 0, 0))
    wide.paste((255, 255, 255), (0, 0, 30, 30))          # left half white
    exif = Image.Exif()
    exif[0x0112] = 6                                     # "rotate 90° clockwise to display"
    raw = encoded(wide, "JPEG", exif=exif.tobytes(), quality=95)
    rgb = images_module.to_rgb(images_module.decode(raw))
    assert rgb.size == (30, 60)
    pixels = np.asarray(rgb).mean(axis=(1, 2))
    assert pixels[:30].mean() > 200 > 50 > pixels[30:].mean()   # white half now on top


def test_crops():
    assert crop_box((178, 218), "celeba") == CELEBA_BOX == (25, 57, 153, 185)
    assert crop_box((100, 60), "center") == (20, 0, 80, 60)
    assert crop_box((100, 60), "none") == (0, 0, 100, 60)
    with pytest.raises(images_module.UnusableImage):
        crop_box((50, 20), "celeba")


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "MAX_PIXELS", 50 * 50)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50 * 50)
    src = tmp_path / "src"
    src.mkdir()
    (src / "bomb.png").write_bytes(encoded(Image.new("L", (400, 400)), "PNG"))
    (src / "ok.png").write_bytes(encoded(photo(1, size=(40, 40)), "PNG"))
    manifest = prepare_dataset(config(src), 16, tmp_path / "out", progress=False)
    assert [s["key"] for s in manifest["skipped"]] == ["bomb.png"]
    assert "decompression bomb" in manifest["skipped"][0]["reason"]


def test_unsafe_archive_members_and_archive_bombs_are_refused(tmp_path, monkeypatch):
    good = encoded(photo(1, size=(20, 20)), "PNG")      # well under the patched limit
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("ok.png", good)
        archive.writestr("../escape.png", good)
        archive.writestr("/abs.png", good)
        archive.writestr("big.png", b"\0" * 5000, compress_type=zipfile.ZIP_DEFLATED)
    monkeypatch.setattr(sources_module, "MAX_IMAGE_BYTES", 4000)
    manifest = prepare_dataset(config(tmp_path / "evil.zip"), 16, tmp_path / "out",
                               progress=False)
    reasons = {s["key"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"../escape.png", "/abs.png", "big.png"}
    assert "'..'" in reasons["../escape.png"] and "absolute" in reasons["/abs.png"]
    assert "bomb" in reasons["big.png"]
    assert list(all_images(tmp_path / "out")) == ["ok.png"]


def test_tar_links_are_refused(tmp_path):
    good = encoded(photo(1, size=(40, 40)), "PNG")
    with tarfile.open(tmp_path / "a.tar", "w") as archive:
        info = tarfile.TarInfo("ok.png")
        info.size = len(good)
        archive.addfile(info, io.BytesIO(good))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    manifest = prepare_dataset(config(tmp_path / "a.tar"), 16, tmp_path / "out", progress=False)
    assert [(s["key"], "link" in s["reason"]) for s in manifest["skipped"]] == [("link.png", True)]


def noise_pngs(n: int, size: int = 24) -> list[bytes]:
    """Incompressible PNGs (noise), so a cut in a compressed archive lands inside a member."""
    return [encoded(photo(i, size=(size, size)), "PNG") for i in range(n)]


def skipped(manifest: dict) -> dict[str, str]:
    return {s["key"]: s["reason"] for s in manifest["skipped"]}


def test_zip_member_with_a_corrupt_deflate_stream_is_skipped(tmp_path):
    pngs = noise_pngs(3)
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for i, data in enumerate(pngs):
            archive.writestr(f"img{i}.png", data)
        info = archive.getinfo("img1.png")
    raw = bytearray((tmp_path / "a.zip").read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start] = 0xFF        # first deflate block: BTYPE 11, reserved, so zlib.error
    (tmp_path / "a.zip").write_bytes(bytes(raw))
    manifest = prepare_dataset(config(tmp_path / "a.zip"), 16, tmp_path / "out", progress=False)
    assert list(skipped(manifest)) == ["img1.png"]
    assert "corrupt archive member" in skipped(manifest)["img1.png"]
    assert sorted(all_images(tmp_path / "out")) == ["img0.png", "img2.png"]


def test_truncated_tar_gz_keeps_the_members_before_the_damage_and_lists_the_rest(tmp_path):
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as archive:
        for i, data in enumerate(noise_pngs(10, size=40)):
            info = tarfile.TarInfo(f"img{i}.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    whole = (tmp_path / "a.tar.gz").read_bytes()
    (tmp_path / "a.tar.gz").write_bytes(whole[: len(whole) * 6 // 10])
    manifest = prepare_dataset(config(tmp_path / "a.tar.gz"), 16, tmp_path / "out",
                               progress=False)
    kept = sorted(all_images(tmp_path / "out"))
    assert 3 <= len(kept) <= 6 and kept == [f"img{i}.png" for i in range(len(kept))]
    (key, reason), = skipped(manifest).items()
    assert key == f"img{len(kept)}.png" and reason.startswith("corrupt archive")


def test_garbage_tar_is_listed_and_stops_the_stage_with_one_line(tmp_path):
    (tmp_path / "a.tar.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"no usable training images \(1 skipped; first: "
                                        r"a.tar.gz \(from its start\): corrupt archive"):
        prepare_dataset(config(tmp_path / "a.tar.gz"), 16, tmp_path / "out", progress=False)


def write_parquet(path: Path, columns: dict, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, **kwargs)
    return path


def test_parquet_folder_with_a_garbage_file_uses_the_good_one(tmp_path):
    write_parquet(tmp_path / "pq" / "a.parquet", {"image": noise_pngs(4)})
    (tmp_path / "pq" / "b.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4 + b"PAR1")
    manifest = prepare_dataset(config(tmp_path / "pq"), 16, tmp_path / "out", progress=False)
    assert sum(manifest["counts"].values()) == 4
    assert list(skipped(manifest)) == ["b.parquet"]
    assert skipped(manifest)["b.parquet"].startswith("not a readable Parquet file")


def test_parquet_row_group_with_a_corrupt_page_is_skipped_and_the_others_kept(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"image": noise_pngs(12)}, row_group_size=4,
                         compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    offset = column.dictionary_page_offset or column.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[offset: offset + 16] = b"\xff" * 16       # the page header; the footer stays intact
    path.write_bytes(bytes(raw))
    manifest = prepare_dataset(config(path), 16, tmp_path / "out", progress=False)
    assert sum(manifest["counts"].values()) == 8
    assert list(skipped(manifest)) == ["a.parquet#4-7"]
    assert skipped(manifest)["a.parquet#4-7"].startswith("corrupt Parquet data, rows skipped")


def test_parquet_image_column_is_the_one_holding_images_or_the_one_named(tmp_path):
    pngs = noise_pngs(4)
    hashes = [bytes([i]) * 32 for i in range(4)]             # binary, but not images
    path = write_parquet(tmp_path / "a.parquet", {"sha": hashes, "image": pngs,
                                                  "thumb": pngs[::-1]})
    prepare_dataset(config(path), 16, tmp_path / "found", progress=False)
    prepare_dataset(config(path, image_column="thumb"), 16, tmp_path / "named", progress=False)
    found, named = all_images(tmp_path / "found"), all_images(tmp_path / "named")
    assert len(found) == len(named) == 4
    assert found["a.parquet#0"].tobytes() == named["a.parquet#3"].tobytes()
    with pytest.raises(DataError, match="no column 'img' of image bytes"):
        prepare_dataset(config(path, image_column="img"), 16, tmp_path / "x", progress=False)


def test_folder_files_over_the_size_limit_are_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_module, "MAX_IMAGE_BYTES", 4000)
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.png").write_bytes(encoded(photo(1, size=(20, 20)), "PNG"))
    (src / "big.png").write_bytes(encoded(photo(2, size=(60, 60)), "PNG"))   # ~10 KB
    manifest = prepare_dataset(config(src), 16, tmp_path / "out", progress=False)
    assert list(skipped(manifest)) == ["big.png"]
    assert "over the 4,000-byte limit" in skipped(manifest)["big.png"]
    # A file that grows after it was listed is still read no further than the limit.
    (src / "big.png").write_bytes(b"\0" * 10_000_000)
    with pytest.raises(images_module.UnusableImage, match="limit"):
        sources_module._read_file(str(src / "big.png"))


def bad_name_sources(tmp_path: Path) -> dict[str, Path]:
    """The same two images, one named with a byte that is not UTF-8, as a folder and a tar."""
    folder = tmp_path / "src"
    folder.mkdir()
    bad = os.fsdecode(b"caf\xe9.png")                   # Latin-1 é: invalid UTF-8
    for name, data in (("ok.png", noise_pngs(1)[0]), (bad, noise_pngs(2)[1])):
        (folder / name).write_bytes(data)
    with tarfile.open(tmp_path / "a.tar", "w", format=tarfile.GNU_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, path.name)
    return {"folder": folder, "tar": tmp_path / "a.tar"}


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_file_names_that_are_not_utf8_are_listed_and_the_stage_prints_them(tmp_path, kind):
    source = bad_name_sources(tmp_path)[kind]
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  source: {source}\n  workers: 1\nmodel:\n  img_size: 16\n")
    proc = tiny.run_stage("prepare", "--params", params, "--out", tmp_path / "out")
    assert proc.exit_code == 0, proc.stderr
    assert "caf\\xe9.png: file name is not valid UTF-8; rename it" in proc.stdout
    assert list(all_images(tmp_path / "out")) == ["ok.png"]


@pytest.mark.parametrize("make", ["missing", "empty", "only_bad"])
def test_unusable_source_fails_with_one_line_and_writes_nothing(tmp_path, make):
    source = tmp_path / "src"
    if make != "missing":
        source.mkdir()
    if make == "only_bad":
        (source / "zero.jpg").write_bytes(b"")
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  source: {source}\n")
    out = tmp_path / "out"
    proc = tiny.run_stage("prepare", "--params", params, "--out", out)
    assert proc.exit_code == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "img/s" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: data.source") and str(source) in lines[0]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["params.yaml"] + ([] if make == "missing" else ["src"]))


def test_library_raises_data_error_for_missing_source(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        prepare_dataset(config(tmp_path / "nope"), 16, tmp_path / "out", progress=False)


# ------------------------------------------------------------------ determinism


def test_split_depends_only_on_the_key(tmp_path):
    src = make_folder(tmp_path / "src", n=30)
    first = prepare_dataset(config(src, holdout_fraction=0.3), 16, tmp_path / "a", progress=False)
    before = {split: set(read_split(tmp_path / "a", split)) for split in ("train", "holdout")}
    for i in range(30, 60):
        (src / f"more{i}.png").write_bytes(encoded(photo(i), "PNG"))
    prepare_dataset(config(src, holdout_fraction=0.3), 16, tmp_path / "b", progress=False)
    after = {split: set(read_split(tmp_path / "b", split)) for split in ("train", "holdout")}
    assert before["train"] <= after["train"] and before["holdout"] <= after["holdout"]
    assert first["counts"]["holdout"] > 0
    keys = [f"k{i}" for i in range(4000)]
    share = sum(in_holdout(k, 0.25) for k in keys) / len(keys)
    assert abs(share - 0.25) < 0.03          # ~4.3 standard errors of a binomial share


def test_reruns_are_byte_identical_across_worker_counts_and_shards(tmp_path):
    src = make_folder(tmp_path / "src", n=12)
    outs = []
    for name, workers in (("a", 1), ("b", 2), ("c", 2)):
        prepare_dataset(config(src, workers=workers, shard_size=4), 16, tmp_path / name,
                        progress=False)
        outs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())})
    assert outs[0] == outs[1] == outs[2]
    assert len([n for n in outs[0] if n.startswith("train-")]) >= 2   # shard_size respected


def test_rerun_replaces_previous_output_atomically(tmp_path):
    src = make_folder(tmp_path / "src", n=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.parquet").write_bytes(b"old")
    prepare_dataset(config(src), 16, out, progress=False)
    assert not (out / "stale.parquet").exists() and (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------ real faces


@pytest.mark.skipif(not FACES.is_dir(), reason="../shared/data/faces-a (CelebA sample) absent")
def test_real_celeba_faces_prepare_completely(tmp_path):
    data = replace(DataConfig(source=str(FACES), crop="celeba", workers=2))
    manifest = prepare_dataset(data, 64, tmp_path / "out", progress=False)
    n_files = len(list(FACES.glob("*.jpg")))
    assert manifest["skipped"] == []
    # The sample holds one file twice (186574.jpg = 197961.jpg, found by this check).
    assert sum(manifest["counts"].values()) + len(manifest["duplicates"]) == n_files
    for dup in manifest["duplicates"]:
        assert (FACES / dup["key"]).read_bytes() == (FACES / dup["same_bytes_as"]).read_bytes()
    assert 0.05 < manifest["counts"]["holdout"] / n_files < 0.15
    first = next(iter(read_split(tmp_path / "out", "train").values()))
    assert Image.open(io.BytesIO(first)).size == (64, 64)
