"""The docs and params.yaml tell the truth about the code."""

import contextlib
import importlib.util
import io
from pathlib import Path

from ddpm.reporting.config import Params, load_all

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_holds_exactly_the_code_defaults():
    assert load_all(REPO / "params.yaml") == Params()


def test_params_reference_is_current():
    spec = importlib.util.spec_from_file_location("params_table", REPO / "scripts/params_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        script.main(REPO / "params.yaml")
    table = printed.getvalue().strip()
    assert table in (REPO / "docs/parameters.md").read_text(), \
        "docs/parameters.md is stale: regenerate its tables with python scripts/params_table.py"
