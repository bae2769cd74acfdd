"""The autoencoder stage's output folder, loadable without unpickling anything.

    autoencoder/
      config.json            the caller's record (the `autoencoder` section, ...) plus
                             source, factor, latent_channels and, for ours, architecture
      weights.safetensors    source = train: our `Autoencoder`'s weights
      pretrained/            source = pretrained: the AutoencoderKL, by save_pretrained
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ddpm.autoencoder.network import Autoencoder
from ddpm.autoencoder.pretrained import PretrainedAutoencoder, load_pretrained
from ddpm.errors import DataError
from ddpm.io.atomic import write_atomically, write_json_atomically

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
PRETRAINED_DIR = "pretrained"
# Our network's weights format: 2 = with the pooling shortcut (network.py). Weights of
# format 1 load without error into today's network but decode wrongly, so they are refused.
FORMAT = 2


def save_autoencoder(codec: Autoencoder | PretrainedAutoencoder, out_dir: str | Path,
                     config: dict) -> None:
    """Write `codec` to `out_dir`; config.json holds `config` (by convention the
    `autoencoder` section under "autoencoder") plus what loading needs, from the codec.

    config.json is written last, so a folder killed mid-save does not load as complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {**config, "factor": codec.factor, "latent_channels": codec.latent_channels}
    if isinstance(codec, PretrainedAutoencoder):
        _save_folder_atomically(out_dir / PRETRAINED_DIR, codec.vae.save_pretrained)
        record["source"] = "pretrained"
    else:
        tensors = {k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}
        write_atomically(out_dir / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
        record.update(source="train", architecture=codec.architecture, format=FORMAT)
    write_json_atomically(out_dir / CONFIG_FILE, record, sort_keys=True)


def _save_folder_atomically(path: Path, save) -> None:
    """`save(tmp_dir)`, then swap the folder into place (a folder cannot be os.replace'd
    over a non-empty one: the old one is renamed away first, then removed)."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        save(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; outputs are ordinary folders
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_autoencoder(out_dir: str | Path, device: str | torch.device = "cpu"
                     ) -> Autoencoder | PretrainedAutoencoder:
    """The saved autoencoder on `device`, in eval mode with gradients off."""
    out_dir = Path(out_dir)
    record = _read_record(out_dir)
    if record["source"] == "pretrained":
        codec: Autoencoder | PretrainedAutoencoder = load_pretrained(out_dir / PRETRAINED_DIR)
    else:
        if record.get("format") != FORMAT:
            raise DataError(f"{out_dir}: an autoencoder saved before the pooling shortcut "
                            f"(format {record.get('format', 1)}, today's {FORMAT}); re-run "
                            "the autoencoder stage (dvc repro autoencoder)")
        codec = Autoencoder(factor=record["factor"], latent_channels=record["latent_channels"],
                            **record["architecture"])
        codec.load_state_dict(load_file(str(out_dir / WEIGHTS_FILE)))
    return codec.to(device).eval().requires_grad_(False)


def _read_record(out_dir: Path) -> dict:
    """config.json, once the files it names are there; else one line saying what to run."""
    record = {}
    if (out_dir / CONFIG_FILE).is_file():
        record = json.loads((out_dir / CONFIG_FILE).read_text())
    needed = {"pretrained": out_dir / PRETRAINED_DIR, "train": out_dir / WEIGHTS_FILE}
    path = needed.get(record.get("source"), out_dir / CONFIG_FILE)
    if record and record.get("source") not in needed:
        raise DataError(f"{out_dir / CONFIG_FILE}: source {record.get('source')!r} is neither "
                        "train nor pretrained; re-run the autoencoder stage "
                        "(dvc repro autoencoder)")
    if not path.exists():
        raise DataError(f"{out_dir}: no saved autoencoder ({path.name} missing); run the "
                        "autoencoder stage first (dvc repro autoencoder)")
    return record
