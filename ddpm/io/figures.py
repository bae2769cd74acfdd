"""Saving matplotlib figures: atomically, with bytes that do not change between runs.

Its own module so that the stages which only draw (report, fid, fid_sweep) do
not import the sampler and model code that ddpm/evaluation/timestep_loss.py needs.
"""

from __future__ import annotations

from pathlib import Path

from ddpm.io.atomic import write_atomically


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure atomically; fixed metadata keeps PNG bytes reproducible."""
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip("."),
                                                   metadata={"Software": None}))
