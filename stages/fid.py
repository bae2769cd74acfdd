"""DVC stage `fid`: FID, its spread, KID, precision/recall and the memorisation check of
the generated samples against the cached real-image reference."""

from pathlib import Path

import typer

from ddpm.config import load_params
from ddpm.devices import torch_device
from ddpm.errors import one_line_errors
from ddpm.evaluation import score_samples


@one_line_errors
def main(params: Path = typer.Option(Path("params.yaml"), help="The params file."),
         samples: Path = typer.Option(Path("samples"), help="Generated samples folder."),
         ref: Path = typer.Option(Path("fid_ref/stats.npz"), help="Reference statistics."),
         data: Path = typer.Option(Path("data/prepared"), help="Prepared data (real pixels)."),
         figures: Path = typer.Option(Path("memorisation"), help="Memorisation figures."),
         out: Path = typer.Option(Path("metrics/fid.json"), help="Output metrics.")) -> None:
    """Sample metrics of samples/ against the reference (pytorch-fid's FID and network)."""
    fid = load_params(params).fid
    device = torch_device("fid", fid.accelerator)
    m = score_samples(samples, ref, out, fid=fid, prepared_dir=data, figures_dir=figures,
                      device=device)
    official = "" if m["inception_official"] else " (stand-in Inception weights)"
    blocks, kid, pr = m["fid_blocks"], m["kid"], m["precision_recall"]
    print(f"FID {m['fid']:.3f}{official}: {m['n_generated']} generated vs "
          f"{m['n_reference']} reference images; {blocks['k']} blocks of {blocks['block_n']}: "
          f"{blocks['mean']:.3f} ± {blocks['sd']:.3f}")
    print(f"KID {kid['mean']:.5f} ± {kid['std']:.5f}; precision {pr['precision']:.3f}, "
          f"recall {pr['recall']:.3f}; memorised {m['memorisation']['fraction_cosine']:.3f}")


if __name__ == "__main__":
    typer.run(main)
