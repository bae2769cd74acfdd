"""Kill train and generate at random moments, resume, and compare with an uninterrupted run.

    OMP_NUM_THREADS=1 python scripts/chaos.py --kills 10 --seed 0

On a tiny pipeline (demo faces at 16 px, a two-level UNet, 300 training steps,
384 samples (DDIM, 25 steps) in 24 shards) this:

1. prepares the data and makes a reference: train and generate, uninterrupted;
2. train rounds: from scratch, run the train stage and SIGKILL it after a
   random delay (uniform over the reference run's duration, or over the last
   uninterrupted run's if the shared CPU has got faster), then start it
   again, as `dvc repro` would (removing models/, which DVC deletes before it
   runs the stage; state/train persists), until a run finishes; then compare
   models/ with the reference byte for byte. Rounds repeat until --kills kills;
3. generate rounds: the same with the generate stage (samples/ persists, as in
   dvc.yaml), comparing every shard and its recorded hash.

The stages run as the commands in dvc.yaml (`python -m stages.NAME`), not
through `dvc repro`, whose own start-up would triple the time per restart; what
DVC does between runs (removing non-persistent outputs) is done here. Every
delay comes from one seeded generator and is printed, so a run can be repeated
with the same --seed. Prints the kills survived and the differences found;
exits 1 if any run failed or any byte differed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# The tiny pipeline: seconds per run on one CPU core.
PARAMS = {
    "data": {"source": "demo", "demo_size": 64, "workers": 1},
    "model": {"img_size": 16, "channels": [16, 32], "down_attn": [False, True],
              "down_channel_indices": [[0, 0], [0, 1]], "mid_attn": [False],
              "mid_channel_indices": [[1, 1]], "up_attn": [False],
              "up_channel_indices": [[1, 0]], "num_res_blocks": 1, "num_heads": 2,
              "norm_groups": 4},
    "train": {"max_steps": 300, "batch_size": 8, "num_workers": 0, "val_every": 50,
              "val_images": 8, "sample_every": 100, "checkpoint_every": 10, "warmup_steps": 5,
              "accelerator": "cpu"},
    "sample": {"n": 384, "shard_size": 16, "batch_size": 16, "steps": 25, "accelerator": "cpu",
               "sweep_steps": [5]},
}


def stage(name: str, work: Path, run: Path) -> list[str]:
    """The stage's command line, as in dvc.yaml, with outputs under `run`."""
    common = [sys.executable, "-m", f"stages.{name}", "--params", str(work / "params.yaml")]
    if name == "prepare":
        return common + ["--out", str(work / "data")]
    if name == "train":
        return common + ["--data", str(work / "data"), "--models", str(run / "models"),
                         "--state", str(run / "state"), "--live", str(run / "live")]
    return common + ["--models", str(work / "reference" / "models"),
                     "--out", str(run / "samples")]


def start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, what: str) -> None:
    output, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{output[-3000:]}")


def timed_run(cmd: list[str], what: str) -> float:
    begin = time.perf_counter()
    finish(start(cmd), what)
    return time.perf_counter() - begin


def outputs(name: str, run: Path) -> dict[str, bytes]:
    """The files compared byte for byte: the weights, or every shard and its hash."""
    if name == "train":
        return {p.name: p.read_bytes() for p in sorted((run / "models").iterdir())}
    return {p.name: p.read_bytes() for p in sorted((run / "samples").glob("shard-*"))}


def progress(name: str, run: Path) -> str:
    """How far the killed run's resumable state had got."""
    if name == "generate":
        return f"{len(list((run / 'samples').glob('shard-*.npy')))} shards on disk"
    sys.path.insert(0, str(REPO))
    from ddpm.training.run import read_checkpoint

    path = run / "state" / "last.ckpt"
    checkpoint = read_checkpoint(path)[0] if path.is_file() else None
    return f"checkpoint at step {checkpoint['global_step']}" if checkpoint else "no checkpoint"


def chaos_round(name: str, work: Path, run: Path, rng: random.Random, duration: float,
                kills: list, wanted: int) -> float:
    """From scratch: start the stage, kill it after a random delay, repeat until a run ends.

    Returns the duration to draw the next delays over: this round's first run's
    wall time if it finished before its kill (the shared CPU got faster, and
    delays past the end of a run kill nothing), else `duration` unchanged.
    """
    shutil.rmtree(run, ignore_errors=True)
    first = True
    while True:
        if name == "train":
            shutil.rmtree(run / "models", ignore_errors=True)  # DVC removes it before the stage
        begin = time.perf_counter()
        proc = start(stage(name, work, run))
        delay = rng.uniform(0, duration) if len(kills) < wanted else None
        if delay is not None:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                kills.append(delay)
                print(f"  {name} kill {len(kills)}: after {delay:.2f} s, {progress(name, run)}",
                      flush=True)
                first = False
                continue
        finish(proc, f"{name} after {len(kills)} kill(s)")
        return time.perf_counter() - begin if first and delay is not None else duration


def chaos(name: str, work: Path, rng: random.Random, duration: float, wanted: int) -> tuple:
    """Rounds until `wanted` kills; (kills, rounds, files compared, files that differ)."""
    reference = outputs(name, work / "reference")
    kills: list[float] = []
    rounds = compared = differ = 0
    while len(kills) < wanted:
        rounds += 1
        before = len(kills)
        duration = chaos_round(name, work, work / "chaos", rng, duration, kills, wanted)
        got = outputs(name, work / "chaos")
        bad = sorted(k for k in reference.keys() | got.keys() if reference.get(k) != got.get(k))
        compared, differ = compared + len(reference), differ + len(bad)
        print(f"  {name} round {rounds}: {len(kills) - before} kill(s), {len(reference)} files "
              f"compared, {len(bad)} differ{': ' + ', '.join(bad) if bad else ''}", flush=True)
    return len(kills), rounds, compared, differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills of each stage (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random delay")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ddpm-chaos"),
                        help="scratch folder (emptied first)")
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    rng = random.Random(args.seed)
    print(f"chaos: --kills {args.kills} --seed {args.seed}, work in {work}", flush=True)

    timed_run(stage("prepare", work, work), "prepare")
    durations = {name: timed_run(stage(name, work, work / "reference"), f"reference {name}")
                 for name in ("train", "generate")}
    print("reference: " + ", ".join(f"{k} {v:.1f} s" for k, v in durations.items()), flush=True)

    results = {name: chaos(name, work, rng, durations[name], args.kills)
               for name in ("train", "generate")}
    total = sum(r[3] for r in results.values())
    for name, (kills, rounds, compared, differ) in results.items():
        print(f"{name}: {kills} kills survived over {rounds} rounds; {compared} files compared "
              f"with the uninterrupted run, {differ} differ")
    print(f"result: {sum(r[0] for r in results.values())} kills survived, {total} differences")
    raise SystemExit(1 if total else 0)


if __name__ == "__main__":
    main()
