"""The command-line options several stages share, written once (typer reads them by name)."""

from pathlib import Path

import typer

PARAMS = typer.Option(Path("params.yaml"), help="The params file.")
DATA = typer.Option(Path("data/prepared"), help="Prepared data set.")
MODELS = typer.Option(Path("models"), help="Trained model folder.")
