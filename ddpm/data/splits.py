"""Which split an image goes to: by a hash of its key, of its person, or by an official list.

Three rules, chosen by the `data` params:
- default: a fixed hash of the image's key (adding images never moves old ones);
- `data.identity_file` (CelebA's identity_CelebA.txt, "image person" per line): a
  hash of the person, so nobody appears in both train and holdout (a face model
  scored on people it trained on looks better than it is);
- `data.partition_file` (CelebA's list_eval_partition.txt, "image 0|1|2"): the
  official split, 0 = train, 1 = valid → holdout, 2 = test → left out, so the
  test people stay unseen by every run.
Images the chosen list does not name are left out and listed, never guessed.
Lists name images by file name; keys match by their last path component.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from ddpm.data.config import DataConfig
from ddpm.errors import DataError

PARTITIONS = {"0": "train", "1": "holdout"}
TEST_PARTITION = "2"


def in_holdout(key: str, holdout_fraction: float) -> bool:
    """Whether `key` belongs to the holdout split: a fixed hash of the key, not its position."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < holdout_fraction


def read_image_list(path: str, param: str) -> tuple[dict[str, str], str]:
    """({image file name: value}, sha256 of the file) from a two-column text file
    ("000001.jpg 2880"); the hash goes into the manifest, so an edited list shows."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{param} = {path!r}: file not found; give the path of the list "
                        "or set it to \"\"")
    data = file.read_bytes()
    table = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected 'image value', got {line.strip()!r}"
                            f"; is {param} the right file?")
        table[fields[0]] = fields[1]
    if not table:
        raise DataError(f"{param} = {path!r}: no entries; is it the right file?")
    return table, hashlib.sha256(data).hexdigest()


class Splitter:
    """`split(key)` → ("train" | "holdout", None) or (None, why the image is left out)."""

    def __init__(self, data: DataConfig):
        if data.identity_file and data.partition_file:
            raise DataError("data.identity_file and data.partition_file are both set; set one "
                            "(CelebA's official partition already keeps people apart)")
        self.fraction = data.holdout_fraction
        self.persons = self.partition = None
        self.file_sha256: dict[str, str] = {}  # the list in use, by param name
        if data.identity_file:
            self.persons, self.file_sha256["identity_file"] = read_image_list(
                data.identity_file, "data.identity_file")
        if data.partition_file:
            self.partition, self.file_sha256["partition_file"] = read_image_list(
                data.partition_file, "data.partition_file")

    @property
    def rule(self) -> str:
        if self.persons is not None:
            return "identity (hash of the person)"
        if self.partition is not None:
            return "partition file (0 train, 1 holdout, 2 left out)"
        return "key (hash of the image key)"

    def split(self, key: str) -> tuple[str | None, str | None]:
        name = PurePosixPath(key).name
        if self.persons is not None:
            person = self.persons.get(name)
            if person is None:
                return None, "not in data.identity_file: person unknown, left out"
            return ("holdout" if in_holdout(f"person:{person}", self.fraction)
                    else "train"), None
        if self.partition is not None:
            part = self.partition.get(name)
            if part == TEST_PARTITION:
                return None, "official test partition (2): left out"
            if part not in PARTITIONS:
                return None, ("not in data.partition_file: left out" if part is None
                              else f"partition {part!r} in data.partition_file is not 0, 1 or 2")
            return PARTITIONS[part], None
        return ("holdout" if in_holdout(key, self.fraction) else "train"), None
