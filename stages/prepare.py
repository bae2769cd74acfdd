"""DVC stage `prepare`: params.yaml (data.*, model.img_size) → data/prepared."""

from pathlib import Path

import typer

from ddpm.config import load_params
from ddpm.data.config import DataConfig
from ddpm.data.prepare import prepare_dataset, summary
from ddpm.errors import one_line_errors
from ddpm.models.config import ModelConfig
from stages.options import PARAMS


@one_line_errors
def main(params: Path = PARAMS,
         out: Path = typer.Option(Path("data/prepared"), help="Output folder.")) -> None:
    """Prepare the data set named by data.source for training."""
    config = load_params(params, data=DataConfig, model=ModelConfig)
    manifest = prepare_dataset(config.data, config.model.img_size, out)
    print(summary(manifest, out))


if __name__ == "__main__":
    typer.run(main)
