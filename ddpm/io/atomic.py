"""Write a file under a temporary sibling name, then rename it into place.

A reader, or a rerun after a kill, sees either the old file or the whole new
one, never half of one. Every output file of the pipeline is written this way.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` to write the whole file at a temporary path, then rename it to `path`.

    The temporary name ends in `.tmp`, so `write` must not infer a format from
    the suffix (give PIL or matplotlib the format explicitly).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


def write_json_atomically(path: str | Path, data: dict, **dumps) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, **dumps) + "\n")


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    write_atomically(path, lambda tmp: tmp.write_bytes(data))


def write_npy_atomically(path: str | Path, array) -> None:
    """`np.save` to `path` through a temporary name (given a file object, so that numpy
    does not append `.npy` to the temporary name)."""
    import numpy as np

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    write_atomically(path, save)


def torch_save_atomically(obj, path: str | Path) -> None:
    """torch.save through memory: the file's bytes (so its sha256) then depend on the
    tensors only, not on the temporary file name torch records inside its archive."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomically(path, buffer.getvalue())
