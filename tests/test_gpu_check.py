"""The GPU check (scripts/gpu_check.sh): its real path end to end on the CPU, a run killed
midway, the order and caps of its parts, what a cut generation keeps, the wheels it
packs, the diffusers peer's layout, and how the table judges the issue's goals.

The smoke run takes the path the GPU takes (each part in its own capped process,
stand-in Inception weights made in the run, rows written into $OUT as parts end) on
tiny sizes; it proves the check runs and reports, not how fast. The GPU figures come
from running the check on a GPU (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ddpm.models.config import ModelConfig
from ddpm.models.log_layouts import LOG9_LISTS, LOG_RES_BLOCKS, WIDE_CHANNELS

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "faces-a"
KINDS = Path("/work/.library/device/KINDS.md")
SMOKE_FACES = 16
sys.path.insert(0, str(REPO / "scripts"))  # diffusers_peer, gpu_check

from gpu_check import pack, plan as plans, results as res, runner  # noqa: E402
from gpu_check.shards import finished_shards, kept_by_cut_run  # noqa: E402
from gpu_check.table import table_rows  # noqa: E402

NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?%?$")
LOG5 = ModelConfig(img_size=64, channels=WIDE_CHANNELS, num_res_blocks=LOG_RES_BLOCKS,
                   **LOG9_LISTS)
ONE_GPU_ORDER = ["device", "prepare", "fid_ref", "train-plain", "generate", "fid",
                 "train-peer", "loader", "train-compile"]


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the markdown table in the check's output or table.md."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return cells[0], cells[2:]


def is_number(cell: str) -> bool:
    return bool(NUMBER.match(cell))


def smoke_faces(tmp_path: Path) -> str:
    """A few real faces when ../shared/data/faces-a is there, else the demo set."""
    if not FACES.is_dir():
        return "demo"
    faces = tmp_path / "faces"
    faces.mkdir()
    for jpg in sorted(FACES.glob("*.jpg"))[:SMOKE_FACES]:
        shutil.copy(jpg, faces)
    return str(faces)


def smoke_env(tmp_path: Path) -> dict:
    """The device's situation: no Inception weights anywhere (the run makes stand-in
    ones), results into $OUT; one CPU thread."""
    env = {**os.environ, "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"),
           "TORCH_HOME": str(tmp_path / "torch_home"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    env.pop("FID_WEIGHTS", None)
    return env


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / res.RESULTS_FILE).read_text().splitlines()]


def events_so_far(out: Path) -> set[tuple[str, str]]:
    """(part, state) of the rows written so far; a line being written is left for later."""
    path = out / res.RESULTS_FILE
    events = set()
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        events.add((row["part"], row["state"]))
    return events


def processes_of(work: Path) -> list[int]:
    """Pids of the processes whose command line names `work` (the check's parts)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(work) in (proc / "cmdline").read_bytes().decode():
                pids.append(int(proc.name))
        except OSError:  # ended while we looked
            continue
    return pids


@pytest.mark.slow
def test_smoke_run_of_the_real_path_records_every_part_as_it_ends(tmp_path):
    """`gpu_check.sh --smoke`: every part on tiny sizes in its own capped process, the
    stand-in weights made in the run, each row in $OUT as the part ends."""
    env = smoke_env(tmp_path)
    out, work = Path(env["OUT"]), Path(env["WORK"])
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke", smoke_faces(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl", "table.md"], \
        (out / "failed.log").read_text() if (out / "failed.log").exists() else ""
    header, rows = table(proc.stdout)
    assert table((out / "table.md").read_text()) == (header, rows)

    # Each part began, then ended, in the order of their value, in its own process.
    events = [(r["part"], r["state"]) for r in rows_of(out)]
    # fid records its FID before the other metrics: kept if the run ends during them.
    expected = [(name, state) for name in ONE_GPU_ORDER
                for state in ("began", "partial", "done") if state != "partial" or name == "fid"]
    assert events == [("plan", "done"), *expected, ("check", "done")]
    assert all((work / "logs" / f"{name}.log").is_file() for name in ONE_GPU_ORDER)
    stamps = [r["t_s"] for r in rows_of(out)]
    assert stamps == sorted(stamps) and stamps[-1] > stamps[1]
    latest = res.latest_rows(rows_of(out))
    assert latest["fid_ref"]["standin_made"] and (work / "standin-inception.pth").is_file()
    assert latest["fid"]["complete"] and latest["fid"]["n"] == latest["fid"]["planned"] == 8

    assert header[:6] == ["part", "setting", "img/s", "wall s", "peak GiB", "train GFLOP/img"]
    assert [c for c in header if c.startswith("MFU @ ")] == ["MFU @ 790", "MFU @ 989"]
    column = {name: i for i, name in enumerate(header)}
    by_part = {}
    for row in rows:
        by_part.setdefault(row[0], []).append(row)
        assert row[column["goal"]] == "—", row  # nothing failed, timed out or was skipped
    assert [len(by_part[p]) for p in ("prepare", "input path", "train", "generate", "fid_ref",
                                      "fid")] == [1, 1, 3, 1, 1, 2], rows

    plain, fast, peer = by_part["train"]
    assert "ddpm UNet" in plain[1] and "plain" in plain[1]
    assert "ddpm UNet" in fast[1] and "compile + channels_last" in fast[1]
    assert "diffusers UNet2DModel" in peer[1]
    for row in by_part["train"]:
        assert is_number(row[column["img/s"]]) and float(row[column["train GFLOP/img"]]) > 0
        assert all(is_number(row[column[f"MFU @ {p}"]]) for p in (790, 989))
    # The peer trains plain in a smoke run: the plain row carries the ratio.
    assert re.match(r"^\d+\.\d\d× \(img/s \d+\.\d\d×\)$", plain[column["× diffusers (FLOP/s)"]])

    for part in ("prepare", "input path", "generate", "fid_ref"):
        assert is_number(by_part[part][0][column["img/s"]]), by_part[part]
    for part in ("generate", "fid_ref"):
        assert is_number(by_part[part][0][column["wall s"]]), by_part[part]
    fid, rest = by_part["fid"]
    assert float(re.search(r"FID ([\d,.]+)", fid[1])[1].replace(",", "")) > 0
    assert "FID of 8 samples" in fid[1]
    assert "STAND-IN" in fid[1] and "STAND-IN" in by_part["fid_ref"][0][1]
    assert is_number(fid[column["wall s"]]) and is_number(rest[column["wall s"]])
    assert "SMOKE RUN" in proc.stdout


@pytest.mark.slow
def test_a_run_killed_midway_leaves_its_finished_rows_in_out(tmp_path):
    """The device tool kills a command at its limit and returns only $OUT: the rows of
    the parts that ended must be there, whole, and the table must hold them."""
    env = smoke_env(tmp_path)
    out, work = Path(env["OUT"]), Path(env["WORK"])
    with open(tmp_path / "console.log", "wb") as console:
        run = subprocess.Popen(["bash", "scripts/gpu_check.sh", "--smoke",
                                smoke_faces(tmp_path)], cwd=REPO, env=env, stdout=console,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # Midway: prepare has ended and fid_ref (seconds: it makes the stand-in) began.
        while {("prepare", "done"), ("fid_ref", "began")} - events_so_far(out):
            assert run.poll() is None, (tmp_path / "console.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no prepare row within 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    # The part that was running dies with the check (it would go on writing rows).
    deadline = time.monotonic() + 20
    while processes_of(work) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes_of(work)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"parts outlived the killed check: {left}"

    latest = res.latest_rows(rows_of(out))  # every line parses as JSON
    assert latest["device"]["state"] == latest["prepare"]["state"] == "done"
    assert latest["prepare"]["images"] == (SMOKE_FACES if FACES.is_dir() else 16)  # demo: 16
    assert "check" not in latest  # the run never ended
    text = (out / "table.md").read_text()
    assert "device: CPU (smoke run)" in text
    header, rows = table(text)
    prepare = next(row for row in rows if row[0] == "prepare")
    assert is_number(prepare[header.index("img/s")]) and prepare[-1] == "—"
    if latest["fid_ref"]["state"] == "began":  # cut during it, as intended
        assert next(row for row in rows if row[0] == "fid_ref")[-1] == res.CUT_OFF
        assert (out / res.RUNNING_LOG).is_file()  # the cut part's own log comes back too
    assert next(row for row in rows if row[0] == "generate")[-1] == "not run"


def test_parts_run_in_the_order_of_their_value():
    assert [p.name for p in plans.parts_for(1)] == ONE_GPU_ORDER
    assert [p.name for p in plans.parts_for(2)] == [*ONE_GPU_ORDER, "train-ddp",
                                                    "generate-ddp"]


def test_caps_are_cut_to_what_is_left_of_the_budget():
    """Each part's cap shrinks to what is left; generate leaves the FID its share unless
    that leaves it too little to start; under MIN_PART_S a part is skipped."""
    generate, fid = plans.part_named("generate"), plans.part_named("fid")
    assert plans.part_cap(generate, 500) == 300
    assert plans.part_cap(generate, 200) == 200 - plans.FID_KEEP_S
    assert plans.part_cap(generate, plans.FID_KEEP_S + 5) == plans.FID_KEEP_S + 5
    assert plans.part_cap(fid, 40) == 40
    assert plans.part_cap(fid, plans.MIN_PART_S - 1) == 0


def test_a_spent_budget_skips_every_part_and_says_so(tmp_path):
    plan = plans.Plan(faces="demo", results=str(tmp_path / "out"), started=time.time() - 600,
                      budget_s=520)
    runner.run_check(plan, tmp_path / "work")
    latest = res.latest_rows(rows_of(tmp_path / "out"))
    assert [latest[name]["state"] for name in ONE_GPU_ORDER] == ["skipped"] * 9
    assert "skipped: 0 s of the 520-s budget left" in (tmp_path / "out" / "table.md").read_text()


def test_a_part_past_its_cap_is_killed_with_its_log_tail_in_out(tmp_path):
    """No part finishes in half a second (it imports torch): its row says it timed out,
    failed.log says why, and its log moves out of $OUT."""
    work, out = tmp_path / "work", tmp_path / "out"
    plan = plans.Plan(faces="demo", results=str(out), started=time.time())
    plans.write_plan(plan, work)
    runner.run_capped(plan, work, plans.part_named("device"), 0.5)
    row = res.latest_rows(rows_of(out))["device"]
    assert row["state"] == "timed out" and row["status"] == "timed out after 0 s"
    assert (out / "failed.log").read_text().startswith("== device: timed out after 0 s;")
    assert not (out / res.RUNNING_LOG).exists() and (work / "logs" / "device.log").is_file()


def write_shard(folder: Path, index: int, images: int, *, damaged: bool = False) -> None:
    path = folder / f"shard-{index:05d}.npy"
    np.save(path, np.zeros((images, 4, 4, 3), np.uint8))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".sha256").write_text(("0" * 64 if damaged else digest) + "\n")


def test_fid_scores_the_shards_a_cut_generation_kept(tmp_path):
    """No manifest (generate was cut): the intact shards count, a damaged one does not;
    with a manifest, its list."""
    write_shard(tmp_path, 0, 4)
    write_shard(tmp_path, 1, 4)
    write_shard(tmp_path, 2, 4, damaged=True)
    files, complete = finished_shards(tmp_path)
    assert [f.name for f in files] == ["shard-00000.npy", "shard-00001.npy"] and not complete
    assert kept_by_cut_run(tmp_path, planned=20, shard_size=4) == \
        {"n": 8, "shards": 2, "planned_shards": 5}
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": ["shard-00000.npy"]}))
    assert finished_shards(tmp_path) == ([tmp_path / "shard-00000.npy"], True)


def test_table_says_how_much_a_cut_run_generated_and_scored():
    plan = plans.Plan(faces=".faces")
    results = {"generate": {"n": 30000, "wall_s": 225.0, "rate": 133.3,
                            "status": "timed out after 225 s; 6 of 10 shards (30,000 images) "
                                      "kept"},
               "fid": {"fid": 20.0, "n": 30000, "wall_s": 40.0, "rate": 750.0,
                       "status": res.CUT_OFF}}
    rows = table_rows(plan, results)
    generate = next(r for r in rows if r[0] == "generate")
    assert "30,000 of 50,000 DDIM-50" in generate[1] and generate[-1].startswith("timed out")
    fid, rest = [r for r in rows if r[0] == "fid"]
    assert "FID of 30,000 of 50,000 (generate was cut short) samples" in fid[1]
    assert fid[-1] == "met: ≤ 60 s" and rest[-1] == res.CUT_OFF


def fake_wheel(folder: Path, name: str, needs: list[str]) -> Path:
    wheel = folder / f"{name.replace('-', '_')}-1.0-py3-none-any.whl"
    metadata = "".join(f"Requires-Dist: {need}\n" for need in needs)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name}-1.0.dist-info/METADATA", f"Name: {name}\n{metadata}")
    return wheel


def test_pack_fetches_what_the_image_lacks_and_those_wheels_needs(tmp_path, monkeypatch):
    """Imported but not in the image: fetched; their requirements too, unless the image
    has them, they are extras, or their markers exclude the device's Python 3.12."""
    needs = {"diffusers": ["importlib-metadata", "numpy>=1", "pytest; extra == 'test'"],
             "importlib-metadata": ["zipp>=3.20", "typing-extensions; python_version < '3.9'"],
             "pytorch-fid": ["torch", "scipy"], "zipp": []}
    monkeypatch.setattr(pack, "download_wheel",
                        lambda name, folder: fake_wheel(folder, name, needs[name]))
    image = pack.image_packages("## Python packages already there\n\nThey: "
                                "Packages: numpy, scipy, torch, Typing_Extensions.\n")
    assert image == {"numpy", "scipy", "torch", "typing-extensions"}
    wheels = pack.pack_wheels({"torch", "numpy", "pytorch_fid", "diffusers", "ddpm"}, image,
                              tmp_path / ".whl")
    assert [w.name.split("-")[0] for w in wheels] == ["diffusers", "pytorch_fid",
                                                     "importlib_metadata", "zipp"]


@pytest.mark.skipif(not KINDS.is_file(), reason="the device tool's KINDS.md is not here")
def test_the_device_image_list_is_read():
    image = pack.image_packages(KINDS.read_text())
    assert {"torch", "lightning", "numpy", "scipy", "typing-extensions"} <= image
    assert not {"pytorch-fid", "diffusers"} & image


def test_peer_has_the_log5_channels_blocks_and_attention_levels():
    """diffusers' levels: ours at 64, 32, 16 and 8 px plus its middle at 4 px; attention
    where ours has it (down and up at 8 px, the middle), two residual blocks per level."""
    from diffusers_peer import peer_layout

    layout = peer_layout(LOG5)
    assert layout["block_out_channels"] == (64, 128, 256, 512, 1024)
    assert layout["layers_per_block"] == 2
    assert layout["down_block_types"] == ("DownBlock2D", "DownBlock2D", "DownBlock2D",
                                          "AttnDownBlock2D", "DownBlock2D")
    # up blocks run from the middle's 4 px back to 64 px: attention at 8 px only
    assert layout["up_block_types"] == ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D",
                                        "UpBlock2D", "UpBlock2D")
    assert layout["add_attention"] is True
    assert layout["attention_head_dim"] == 512 // LOG5.num_heads
    assert layout["resnet_time_scale_shift"] == "scale_shift"


def test_table_judges_the_issues_goals_on_full_sizes():
    """MFU against the first assumed peak, the peer ratio in achieved FLOP/s (the networks'
    FLOPs differ), 50K samples in 5 minutes and FID-50K in 60 s; met or MISSED."""
    plan = plans.Plan(faces=".faces")
    flops = 30e9  # per image
    results = {
        "train-compile": {"rate": 0.5 * 790e12 / flops, "flops_per_image": flops,
                          "compile_channels_last": True, "devices": 1},
        "train-peer": {"rate": 0.25 * 790e12 / (2 * flops), "flops_per_image": 2 * flops,
                       "compile_channels_last": True, "devices": 1},
        "generate": {"n": 50000, "rate": 50000 / 400, "wall_s": 400.0},
        "fid": {"fid": 12.3, "n": 50000, "wall_s": 45.0, "rate": 50000 / 45, "rest_s": 9.0},
    }
    rows = table_rows(plan, results)
    plain, fast = [r for r in rows if r[0] == "train" and "ddpm UNet (log #5)" in r[1]]
    assert "plain" in plain[1] and "compile + channels_last" in fast[1]
    assert fast[6:8] == ["50.0%", "39.9%"]          # MFU at 790 and 989 TFLOP/s
    assert fast[8] == "2.00× (img/s 4.00×)"
    assert fast[9] == "met: MFU ≥ 40% at 790; met: ≥ 1.3× peer"
    assert plain[9] == "not run"                     # no result for it
    generate = next(r for r in rows if r[0] == "generate")
    assert generate[-1] == "MISSED: ≤ 5 min"
    fid = next(r for r in rows if r[0] == "fid" and "FID 12.30" in r[1])
    assert fid[-1] == "met: ≤ 60 s"
