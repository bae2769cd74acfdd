"""DVC stage `fid`: FID of the generated samples against the cached reference statistics."""

from pathlib import Path

import torch
import typer

from ddpm.config import load_params
from ddpm.errors import one_line_errors
from ddpm.evaluation import score_samples


@one_line_errors
def main(params: Path = typer.Option(Path("params.yaml"), help="The params file."),
         samples: Path = typer.Option(Path("samples"), help="Generated samples folder."),
         ref: Path = typer.Option(Path("fid_ref/stats.npz"), help="Reference statistics."),
         out: Path = typer.Option(Path("metrics/fid.json"), help="Output metrics.")) -> None:
    """Fréchet Inception distance of samples/ to the reference (pytorch-fid)."""
    fid = load_params(params).fid
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = score_samples(samples, ref, out, weights=fid.weights, batch_size=fid.batch_size,
                            device=device)
    official = "" if metrics["inception_official"] else " (stand-in Inception weights)"
    print(f"FID {metrics['fid']:.3f}{official}: {metrics['n_generated']} generated vs "
          f"{metrics['n_reference']} reference images")


if __name__ == "__main__":
    typer.run(main)
