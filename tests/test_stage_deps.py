"""Every project file a stage can import is among that stage's dvc.yaml deps.

A missing dep means `dvc repro` keeps a stale output after that file changes:
the cache would lie. The imports are read statically (every `import` anywhere in
a file, including inside functions, followed through the project's packages), so
lazily imported modules count too; files a stage imports but never runs are listed
in NOT_RUN with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ddpm", "stages")


def module_file(name: str) -> Path | None:
    """The file of a dotted project module name, or None if it is not one."""
    path = REPO.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_modules(file: Path) -> set[str]:
    """Dotted names of the project modules one file imports, wherever the import sits."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # The project imports absolutely; a relative import would slip past this reader.
            assert not node.level, f"{file}:{node.lineno}: use an absolute import"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules
    return {name for name in names if name.split(".")[0] in PACKAGES}


def closure(module: str) -> set[Path]:
    """The files `python -m module` can load from this repository, parent packages included."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):     # importing a.b.c runs a and a.b first
            file = module_file(".".join(parts[:i]))
            if file is not None and file not in seen:
                seen.add(file)
                todo.extend(imported_modules(file))
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def covered(file: Path, deps: list[str]) -> bool:
    relative = file.relative_to(REPO).as_posix()
    return any(relative == dep.rstrip("/") or relative.startswith(dep.rstrip("/") + "/")
               for dep in deps)


# Imported but never run by these stages, so deliberately not deps (a change there
# must not recompute them), with the reason: {stage: {path prefix: why}}. Each entry
# must still match an import: no stale excuses. Empty since each section's config
# moved beside its code (issue 25): ddpm/config.py imports no diffusion code.
NOT_RUN: dict[str, dict[str, str]] = {}


@pytest.mark.parametrize("stage", sorted(stages()))
def test_every_file_a_stage_imports_is_a_dep_of_it(stage):
    spec = stages()[stage]
    module = spec["cmd"].split("python -m ", 1)[1].split()[0]
    deps = [str(dep) for dep in spec.get("deps", [])]
    # Empty package markers change nothing a stage computes; they need not be deps.
    missing = sorted(file.relative_to(REPO).as_posix() for file in closure(module)
                     if not covered(file, deps) and file.read_text().strip())
    excused = NOT_RUN.get(stage, {})
    unexplained = [f for f in missing if not any(f.startswith(prefix) for prefix in excused)]
    assert not unexplained, f"stage {stage} imports files that are not in its deps: {unexplained}"
    stale = [prefix for prefix in excused if not any(f.startswith(prefix) for f in missing)]
    assert not stale, f"stage {stage}: NOT_RUN lists {stale}, which it no longer imports"


def test_the_import_reader_sees_imports_inside_functions_and_package_reexports():
    # The reader's blind spots would hide missing deps. memorisation.py imports
    # ddpm.io.figures inside a function; importing ddpm.diffusion.config runs the
    # package's __init__, which imports its other modules (likelihood.py only there).
    lazy = imported_modules(REPO / "ddpm/metrics/memorisation.py")
    assert "ddpm.io.figures" in lazy and "matplotlib" not in lazy
    assert imported_modules(REPO / "ddpm/diffusion/config.py") == {
        "ddpm.config", "ddpm.config.bounded", "ddpm.errors", "ddpm.errors.ConfigError"}
    files = {file.relative_to(REPO).as_posix() for file in closure("ddpm.diffusion.config")}
    assert {"ddpm/diffusion/__init__.py", "ddpm/diffusion/likelihood.py"} <= files


def files_of(module: str) -> set[str]:
    return {file.relative_to(REPO).as_posix() for file in closure(module)}


def test_the_params_machinery_imports_no_section_and_no_other_code():
    # Every stage imports ddpm/config.py: anything it imported would be every stage's dep.
    assert files_of("ddpm.config") == {"ddpm/__init__.py", "ddpm/config.py", "ddpm/errors.py"}


@pytest.mark.parametrize("stage, never", [
    ("train", "ddpm/sampling/"),       # a sampler setting must never retrain (13 minutes)
    ("prepare", "ddpm/diffusion/"),    # model.img_size's module builds no network, no schedule
    ("prepare", "ddpm/models/registry.py"),
    ("fid_ref", "ddpm/diffusion/"),    # the real images' statistics know no model or sampler
    ("fid_ref", "ddpm/models/"),
    ("fid_ref", "ddpm/sampling/"),
])
def test_a_stage_imports_no_config_of_a_section_it_does_not_read(stage, never):
    reached = sorted(f for f in files_of(f"stages.{stage}") if f.startswith(never))
    assert not reached, f"stage {stage} imports {reached}"
