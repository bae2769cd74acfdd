"""DVC stage `report`: every stage's outputs → reports/report.md + reports/figures/."""

from pathlib import Path

import typer

from ddpm.errors import one_line_errors
from ddpm.reporting.config import load_all
from ddpm.reporting.report import RunOutputs, build_report
from stages.options import PARAMS


@one_line_errors
def main(params: Path = PARAMS,
         out: Path = typer.Option(Path("reports/report.md"), help="The report to write.")
         ) -> None:
    """Write the run's markdown report with its figures."""
    outputs = RunOutputs(prepared=Path("data/prepared"), models=Path("models"),
                         live=Path("dvclive"), samples=Path("samples"),
                         fid=Path("metrics/fid.json"), analysis=Path("analysis"),
                         sweep=Path("sweep"), memorisation=Path("memorisation"),
                         autoencoder=Path("autoencoder"))
    out.parent.mkdir(parents=True, exist_ok=True)
    build_report(load_all(params), outputs, out)
    print(f"report: {out}")


if __name__ == "__main__":
    typer.run(main)
