"""DVC stage `fid_ref`: Inception statistics of the real images (cached; model-independent)."""

from pathlib import Path

import typer

from ddpm.config import load_params
from ddpm.errors import one_line_errors
from ddpm.evaluation.config import FidConfig
from ddpm.evaluation.reference import reference_statistics
from ddpm.io.devices import torch_device
from stages.options import DATA, PARAMS


@one_line_errors
def main(params: Path = PARAMS,
         data: Path = DATA,
         out: Path = typer.Option(Path("fid_ref/stats.npz"), help="Output statistics.")) -> None:
    """μ and Σ of the 2048-d Inception pool features of fid.ref_split (pytorch-fid's .npz),
    and the features of up to fid.max_real images per split and of the memorisation check's
    fid.memorisation_train training images and their mirror images (features.npz beside it)."""
    fid = load_params(params, fid=FidConfig).fid
    device = torch_device("fid", fid.accelerator)
    meta = reference_statistics(data, out, split=fid.ref_split, weights=fid.weights,
                                batch_size=fid.batch_size, max_real=fid.max_real,
                                memorisation_train=fid.memorisation_train, device=device)
    memorised = meta["memorisation"]["train"]
    print(f"FID reference: {meta['n']} {meta['split']} images -> {out}; memorisation check: "
          f"{memorised} training images and their mirror images")


if __name__ == "__main__":
    typer.run(main)
