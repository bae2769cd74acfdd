"""A default changed in code re-runs the stages that read its section, and no other (issue 25).

Each section's dataclass lives in the package that owns it (ddpm/sampling/config.py holds
the sample section's defaults), and a stage imports only the sections it loads, so DVC,
which hashes every code dep, sees a changed default only in those stages. Checked for real
with DVC's own `status`, in-process, on a copy of the pipeline: its dvc.lock is first
brought up to date with the code (as `dvc repro` would leave it; outputs are absent in the
copy and ignored), then a default is changed in code and in params.yaml together, as a real
change of default would be, and the stages whose status changed are the ones it re-runs.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What `dvc status` reads: the pipeline, its params and the code deps (outputs are absent).
PIPELINE_FILES = ("dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore")
PIPELINE_DIRS = (".dvc", "ddpm", "stages", "demo")
ABSENT = {"deleted", "not in cache"}


def copy_pipeline(dest: Path) -> Path:
    dest.mkdir()
    for name in PIPELINE_FILES:
        shutil.copy2(REPO / name, dest / name)
    for name in PIPELINE_DIRS:
        shutil.copytree(REPO / name, dest / name,
                        ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
    return dest


def open_repo(root: Path):
    from dvc.repo import Repo

    # The copy is no git repository; DVC's per-machine state stays inside the copy too.
    return Repo(str(root), config={"core": {"no_scm": True,
                                            "site_cache_dir": str(root / ".dvc" / "site")}})


def record_current_code(root: Path) -> None:
    """Write the copy's dvc.lock for the code as it is (`dvc commit`, outputs missing)."""
    with open_repo(root) as repo, repo.lock:
        for stage in repo.index.stages:
            stage.save(allow_missing=True, run_cache=False)
            stage.dump(update_pipeline=False)


def changed_inputs(root: Path) -> dict[str, set[str]]:
    """Stage name → its changed deps and params per `dvc status` (outputs, absent, ignored)."""
    with open_repo(root) as repo:
        status = repo.status()
    changed: dict[str, set[str]] = {}
    for target, entries in status.items():
        stage = target.rsplit(":", 1)[-1]
        for entry in entries:
            if isinstance(entry, str):           # e.g. "changed command"
                changed.setdefault(stage, set()).add(entry)
                continue
            for path, state in entry.get("changed deps", {}).items():
                if isinstance(state, dict):      # params.yaml: {key: state}
                    changed.setdefault(stage, set()).update(f"{path}:{key}" for key in state)
                elif state not in ABSENT:
                    changed.setdefault(stage, set()).add(path)
    return changed


def change_default(root: Path, code: str, field: str, section: str, old: str, new: str) -> None:
    """`field`'s default old → new in `code` and in params.yaml's `section`, both exactly once."""
    for path, pattern in ((root / code, rf"(\n    {field}: [^=\n]+= (?:bounded\()?){old}\b"),
                          (root / "params.yaml", rf"(\n{section}:\n(?:  .*\n)*?  {field}: +){old}\b")):
        text, count = re.subn(pattern, rf"\g<1>{new}", path.read_text())
        assert count == 1, f"{path.name}: {field} = {old} not found once"
        path.write_text(text)


@pytest.mark.parametrize("code, section, field, old, new, reader, reruns", [
    # The issue: a sampler default retrained the model (13 minutes). fid and fid_sweep read
    # the shards through ddpm/sampling/generate.py, timestep_loss reads sample.variance
    # and sample.clip_x0, the report every section.
    ("ddpm/sampling/config.py", "sample", "steps", "10", "12", "generate",
     {"generate", "fid", "fid_sweep", "timestep_loss", "report"}),
    # The FID stages' section (timestep_loss loads analysis, from the same module).
    ("ddpm/evaluation/config.py", "fid", "max_real", "300", "400", "fid_ref",
     {"fid_ref", "fid", "fid_sweep", "timestep_loss", "report"}),
    # A diffusion default re-trains the model, but never the autoencoder, nor re-encodes
    # (issue 27: in latent space those are the expensive stages before train).
    ("ddpm/diffusion/config.py", "diffusion", "min_snr_gamma", "5.0", "4.0", "train",
     {"train", "generate", "fid", "fid_sweep", "timestep_loss", "report"}),
])
def test_a_changed_default_reruns_only_the_stages_that_read_its_section(
        tmp_path, code, section, field, old, new, reader, reruns):
    root = copy_pipeline(tmp_path / "repo")
    record_current_code(root)
    before = changed_inputs(root)
    assert not before, f"the copy's dvc.lock should match its code: {before}"
    change_default(root, code, field, section, old, new)
    after = changed_inputs(root)
    touched = {stage for stage in after if after[stage] != before.get(stage)}
    assert touched == reruns, after
    # The stage that reads the key sees both halves of the change: its code (the file, or
    # the folder it depends on whole) and its param (the key, or the section it reads whole).
    seen = after[reader]
    assert any(code == dep or code.startswith(dep + "/") for dep in seen), seen
    assert seen & {f"params.yaml:{section}.{field}", f"params.yaml:{section}"}, seen
