"""DVC stage `fid`: FID with its standard error and spread, KID, SWD, precision/recall and
the memorisation check of the generated samples against the cached real-image reference."""

from pathlib import Path

import typer

from ddpm.config import load_params
from ddpm.errors import one_line_errors
from ddpm.evaluation.config import FidConfig
from ddpm.evaluation.score import score_samples
from ddpm.io.devices import torch_device
from stages.options import DATA, PARAMS


@one_line_errors
def main(params: Path = PARAMS,
         samples: Path = typer.Option(Path("samples"), help="Generated samples folder."),
         ref: Path = typer.Option(Path("fid_ref/stats.npz"), help="Reference statistics."),
         data: Path = DATA,
         figures: Path = typer.Option(Path("memorisation"), help="Memorisation figures."),
         autoencoder: Path = typer.Option(Path("autoencoder"), help="Latent space: the "
                                          "autoencoder's holdout reconstructions."),
         out: Path = typer.Option(Path("metrics/fid.json"), help="Output metrics.")) -> None:
    """Sample metrics of samples/ against the reference (pytorch-fid's FID and network)."""
    fid = load_params(params, fid=FidConfig).fid
    device = torch_device("fid", fid.accelerator)
    m = score_samples(samples, ref, out, fid=fid, prepared_dir=data, figures_dir=figures,
                      device=device, autoencoder_dir=autoencoder)
    official = {"official": "", "ported": " (Inception weights ported from TorchScript)"}.get(
        m["inception_kind"], " (stand-in Inception weights)")
    blocks, kid, pr, se, swd = (m["fid_blocks"], m["kid"], m["precision_recall"], m["fid_se"],
                                m["swd"])
    boot = lambda v: "off" if v is None else f"{v:.3f}"  # noqa: E731  (fid.bootstrap = 0)
    print(f"FID {m['fid']:.3f}{official}: {m['n_generated']} generated vs "
          f"{m['n_reference']} reference images; SE {se['jackknife']:.3f} (jackknife), "
          f"{boot(se['bootstrap'])} (bootstrap); {blocks['k']} blocks of {blocks['block_n']}: "
          f"{blocks['mean']:.3f} ± {blocks['sd']:.3f}")
    print(f"KID ×10³ {kid['mean_x1e3']:.3f} ± {kid['std_x1e3']:.3f} ({kid['subsets']} subsets); "
          f"all {kid['full_x1e3']:.3f}, SE {kid['se_jackknife_x1e3']:.3f} (jackknife), "
          f"{boot(kid['se_bootstrap_x1e3'])} (bootstrap)")
    levels = ", ".join(f"{side} px {v:.2f}" for side, v in swd["levels_x1e3"].items())
    print(f"SWD ×10³ {swd['mean_x1e3']:.2f} ({levels}); precision {pr['precision']:.3f}, "
          f"recall {pr['recall']:.3f}, coverage {pr['coverage']:.3f} ({pr['n_generated']} vs "
          f"{pr['n_reference']}); memorised {m['memorisation']['fraction_cosine']:.3f}")
    mem = m["memorisation"]
    print(f"memorisation: {mem['flagged_cosine']} / {mem['flagged_pixel']} of "
          f"{mem['n_generated']} samples flagged (cosine / pixel); chance allows up to "
          f"{mem['null_upper_count']} ({mem['confidence']:.0%}, {mem['n_holdout']} holdout "
          f"images): copying evidence {mem['copying_evidence_cosine']} / "
          f"{mem['copying_evidence_pixel']}; {mem['n_train']} training images searched, and "
          "their mirror images")
    if "reconstruction" in m:
        r = m["reconstruction"]
        print(f"reconstruction FID {r['fid']:.3f} ({r['n']} holdout images; the originals "
              f"themselves: {r['fid_originals']:.3f})")


if __name__ == "__main__":
    typer.run(main)
