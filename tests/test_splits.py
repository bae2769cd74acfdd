"""Leak-free splits: duplicates kept once before the split, by-person and official-list splits."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from ddpm.data.config import DataConfig
from ddpm.data.prepare import prepare_dataset, summary
from ddpm.errors import DataError
from tests.test_prepare import encoded, photo, read_split


def faces(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i:06d}.png").write_bytes(encoded(photo(i), "PNG"))
    return folder


def prepare(src: Path, out: Path, **kwargs) -> dict:
    data = replace(DataConfig(source=str(src), workers=1), **kwargs)
    return prepare_dataset(data, 16, out, progress=False)


def splits(out: Path) -> dict[str, set[str]]:
    return {split: set(read_split(out, split)) for split in ("train", "holdout")}


def test_identical_files_are_kept_once_before_the_split_and_listed(tmp_path):
    src = faces(tmp_path / "src", 40)
    for i in range(40):  # every image twice more, under names that hash to either split
        shutil.copy(src / f"{i:06d}.png", src / f"copy-{i}.png")
        shutil.copy(src / f"{i:06d}.png", src / f"sub-{i}.png")
    manifest = prepare(src, tmp_path / "out", holdout_fraction=0.3)
    kept = splits(tmp_path / "out")
    assert sum(len(keys) for keys in kept.values()) == 40
    assert len(manifest["duplicates"]) == 80
    # The first in source order (sorted keys) stays: the 0000xx.png names.
    assert all(key.startswith("0000") for keys in kept.values() for key in keys)
    pairs = {d["key"]: d["same_bytes_as"] for d in manifest["duplicates"]}
    assert pairs["copy-7.png"] == pairs["sub-7.png"] == "000007.png"
    assert "left out 80 duplicate file(s)" in summary(manifest, tmp_path / "out")
    images = {**read_split(tmp_path / "out", "train"), **read_split(tmp_path / "out", "holdout")}
    assert len(set(images.values())) == 40  # no two prepared images are the same bytes


def test_identity_file_keeps_every_person_in_one_split(tmp_path):
    src = faces(tmp_path / "src", 120)
    person = {f"{i:06d}.png": i // 4 for i in range(118)}  # 4 images a person; 2 unnamed
    ids = tmp_path / "identity_CelebA.txt"
    ids.write_text("".join(f"{name} {p}\n" for name, p in person.items()))
    manifest = prepare(src, tmp_path / "out", holdout_fraction=0.3, identity_file=str(ids))
    kept = splits(tmp_path / "out")
    people = {split: {person[k] for k in keys} for split, keys in kept.items()}
    assert people["train"] and people["holdout"]
    assert not people["train"] & people["holdout"]
    assert {s["key"] for s in manifest["skipped"]} == {"000118.png", "000119.png"}
    assert "person" in manifest["skipped"][0]["reason"]
    assert manifest["split_files"]["identity_file"]
    # A key split would have put some person in both splits: the rule is doing the work.
    by_key = prepare(src, tmp_path / "bykey", holdout_fraction=0.3)
    assert by_key["split_rule"].startswith("key")
    key_people = {split: {person.get(k) for k in keys} - {None}
                  for split, keys in splits(tmp_path / "bykey").items()}
    assert key_people["train"] & key_people["holdout"]


def test_partition_file_is_followed_exactly(tmp_path):
    src = faces(tmp_path / "src", 30)
    part = {f"{i:06d}.png": "012"[i % 3] for i in range(29)}
    lst = tmp_path / "list_eval_partition.txt"
    lst.write_text("".join(f"{name} {p}\n" for name, p in part.items()))
    manifest = prepare(src, tmp_path / "out", partition_file=str(lst))
    kept = splits(tmp_path / "out")
    assert kept["train"] == {k for k, p in part.items() if p == "0"}
    assert kept["holdout"] == {k for k, p in part.items() if p == "1"}
    reasons = {s["key"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {k for k, p in part.items() if p == "2"} | {"000029.png"}
    assert "test partition" in reasons["000002.png"]


@pytest.mark.parametrize("content, needle", [("000001.png\n", "expected 'image value'"),
                                             ("", "no entries")])
def test_a_malformed_list_stops_with_one_line_and_writes_nothing(tmp_path, content, needle):
    src = faces(tmp_path / "src", 4)
    lst = tmp_path / "ids.txt"
    lst.write_text(content)
    with pytest.raises(DataError, match=needle):
        prepare(src, tmp_path / "out", identity_file=str(lst))
    with pytest.raises(DataError, match="file not found"):
        prepare(src, tmp_path / "out", partition_file=str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="both set"):
        prepare(src, tmp_path / "out", identity_file=str(lst), partition_file=str(lst))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.txt", "src"]  # no staging left
