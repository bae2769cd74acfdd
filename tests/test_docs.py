"""The README and params.yaml tell the truth about the code."""

import subprocess
import sys
from pathlib import Path

from ddpm.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_holds_exactly_the_code_defaults():
    assert load_params(REPO / "params.yaml") == Params()


def test_readme_params_reference_is_current():
    table = subprocess.run([sys.executable, "scripts/params_table.py"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.strip()
    assert table in (REPO / "README.md").read_text(), \
        "README params reference is stale: regenerate with python scripts/params_table.py"
