"""The check's markdown table, from the parts' latest rows (light: no torch).

`results` maps a part's name to its latest row (gpu_check.results): its figures, and
a `status` when it failed, timed out, was skipped or never ended.
"""

from __future__ import annotations

from gpu_check.plan import GOAL_FID_S, GOAL_GENERATE_S, GOAL_MFU, GOAL_PEER, Plan

STANDIN_NOTE = "STAND-IN Inception weights (FIDs compare runs of the same file only)"

TRAIN_VARIANTS = {  # name → (network, compile + channels_last, devices: 1 or all GPUs)
    "train-plain": ("ddpm", False, 1),
    "train-compile": ("ddpm", True, 1),
    "train-peer": ("diffusers", None, 1),   # None: as plan.peer says
    "train-ddp": ("ddpm", True, 0),         # 0: every visible GPU
}


def _num(value, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _goal(met: bool, text: str) -> str:
    return f"{'met' if met else 'MISSED'}: {text}"


def _row(part: str, setting: str, plan: Plan, *, rate=None, wall=None, peak=None,
         gflop: str = "—", mfus: list[str] | None = None, ratio: str = "—",
         goal: str = "—") -> list[str]:
    return [part, setting, _num(rate), _num(wall, 1), _num(peak, 1), gflop,
            *(mfus or ["—"] * len(plan.peaks)), ratio, goal]


def _data_rows(plan: Plan, results: dict[str, dict]) -> list[list[str]]:
    prep, loader = results.get("prepare", {}), results.get("loader", {})
    rows = [_row("prepare", f"{prep.get('images', '?')} images of {plan.faces}, "
                 f"{plan.model['img_size']} px, {prep.get('crop', '?')} crop", plan,
                 rate=prep.get("rate"), wall=prep.get("seconds"),
                 goal=prep.get("status", "—" if prep else "not run"))]
    pinned = "pinned" if loader.get("pinned") else "not pinned"
    for workers, rate in loader.get("rates", {"?": None}).items():
        rows.append(_row("input path", f"loader alone, {workers} workers, batch {plan.batch}, "
                         f"{pinned}, uint8 to the device", plan, rate=rate,
                         goal=loader.get("status", "—" if loader else "not run")))
    return rows


def _train_row(plan: Plan, name: str, r: dict, peer: dict) -> list[str]:
    network, fast, _ = TRAIN_VARIANTS[name]
    fast = r.get("compile_channels_last", plan.peer == "compile" if fast is None else fast)
    what = {"ddpm": "ddpm UNet", "diffusers": "diffusers UNet2DModel"}[network]
    what += " (smoke layout)" if plan.smoke else \
        " (log #5)" if network == "ddpm" else " (log #5's levels)"
    setting = (f"{what}, {r.get('precision', 'bf16-mixed')}, batch {plan.batch}, "
               f"{'compile + channels_last' if fast else 'plain'}"
               + (f", DDP × {r.get('devices', plan.gpus)}" if name == "train-ddp" else ""))
    if "rate" not in r:
        return _row("train", setting, plan, goal=r.get("status", "not run"))
    flop_rate = r["rate"] * r["flops_per_image"] / r.get("devices", 1)  # per GPU
    mfus = [flop_rate / (peak * 1e12) for peak in plan.peaks]
    ratio = None  # against the peer trained the same way, on one GPU
    if "rate" in peer and network == "ddpm" and name != "train-ddp" \
            and fast == peer["compile_channels_last"]:
        ratio = flop_rate / (peer["rate"] * peer["flops_per_image"])
    goal = "—"
    if not plan.smoke and network == "ddpm":
        goal = _goal(mfus[0] >= GOAL_MFU, f"MFU ≥ {GOAL_MFU:.0%} at {plan.peaks[0]:g}")
        if ratio is not None:
            goal += "; " + _goal(ratio >= GOAL_PEER, f"≥ {GOAL_PEER}× peer")
    return _row("train", setting, plan, rate=r["rate"], peak=r.get("peak_gib"),
                gflop=f"{r['flops_per_image'] / 1e9:.2f}", mfus=[f"{m:.1%}" for m in mfus],
                ratio="—" if ratio is None else
                f"{ratio:.2f}× (img/s {r['rate'] / peer['rate']:.2f}×)", goal=goal)


def _generate_row(plan: Plan, name: str, r: dict) -> list[str]:
    # A cut generation still reports the shards it finished: "30,000 of 50,000".
    made = r.get("n", plan.sample_n)
    count = f"{made:,}" if made == plan.sample_n else f"{made:,} of {plan.sample_n:,}"
    setting = (f"generate stage: {count} DDIM-{plan.ddim_steps}, "
               f"{plan.model['img_size']} px, bf16-mixed, compile {plan.sample_compile}, "
               f"batch {plan.sample_batch}"
               + (f", {r.get('devices', plan.gpus)} GPUs" if name == "generate-ddp" else ""))
    goal = r.get("status") or ("not run" if not r else "—" if plan.smoke or "wall_s" not in r
                               else _goal(r["wall_s"] <= GOAL_GENERATE_S,
                                          f"≤ {GOAL_GENERATE_S / 60:g} min"))
    return _row("generate", setting, plan, rate=r.get("rate"), wall=r.get("wall_s"),
                peak=r.get("peak_gib"), goal=goal)


def _fid_rows(plan: Plan, results: dict[str, dict]) -> list[list[str]]:
    ref, r = results.get("fid_ref", {}), results.get("fid", {})
    weights = "official" if ref.get("official") else "STAND-IN"
    value = f"FID {r['fid']:,.2f}" if "fid" in r else "FID —"
    scored = r.get("n", plan.sample_n)
    count = f"{scored:,}" if scored == plan.sample_n else \
        f"{scored:,} of {plan.sample_n:,} (generate was cut short)"
    if "fid" in r:  # its value stands even when the other metrics after it were cut
        goal = "—" if plan.smoke else _goal(r["wall_s"] <= GOAL_FID_S, f"≤ {GOAL_FID_S:g} s")
    else:
        goal = r.get("status", "not run")
    return [
        _row("fid_ref", f"fid_ref stage: {ref.get('images', '?')} real images, Inception on "
             f"the device, batch {plan.fid_batch}, {weights} weights", plan,
             rate=ref.get("rate"), wall=ref.get("wall_s"),
             goal=ref.get("status", "—" if ref else "not run")),
        _row("fid", f"FID of {count} samples ({value}, {weights} "
             "weights), Inception + Fréchet distance", plan, rate=r.get("rate"),
             wall=r.get("wall_s"), goal=goal),
        _row("fid", "the fid stage's other metrics on them (KID, precision/recall, "
             "memorisation)", plan, wall=r.get("rest_s"),
             goal=r.get("status", "—" if r else "not run")),
    ]


def table_rows(plan: Plan, results: dict[str, dict]) -> list[list[str]]:
    """One row per measured thing: [part, setting, img/s, wall s, peak GiB,
    train GFLOP/img, MFU at each peak, × peer, goal]."""
    several = plan.gpus > 1
    peer = results.get("train-peer", {})
    train = [_train_row(plan, name, results.get(name, {}), peer)
             for name in ("train-plain", "train-compile", "train-peer", "train-ddp")
             if several or name != "train-ddp"]
    generate = [_generate_row(plan, name, results.get(name, {}))
                for name in ("generate", "generate-ddp") if several or name != "generate-ddp"]
    return _data_rows(plan, results) + train + generate + _fid_rows(plan, results)


def header_lines(plan: Plan, results: dict[str, dict]) -> list[str]:
    device = results.get("device", {})
    lines = [f"device: {device.get('name', '?')} × {plan.gpus}, torch {device.get('torch', '?')}, "
             f"lightning {device.get('lightning', '?')}; {device.get('matmul', 'matmul')} "
             f"measured at {_num(device.get('matmul_tflops'), 1)} TFLOP/s; "
             f"commit {plan.commit}, {device.get('date', 'date ?')}"]
    lines.append(f"MFU = measured train FLOPs per image × img/s ÷ assumed dense bf16 peak: "
                 f"{plan.peaks[0]:g} TFLOP/s (bf16 matmul measured on an H200 here; the issue's "
                 f"H100 figure) and {plan.peaks[1]:g} (H100/H200 SXM datasheet)"
                 if len(plan.peaks) == 2 else f"MFU at assumed peaks {plan.peaks} TFLOP/s")
    if not results.get("fid_ref", {}).get("official", False):
        lines.append(f"FID: {STANDIN_NOTE}")
    if plan.smoke:
        lines.append("SMOKE RUN: tiny sizes on the CPU; it proves the check runs, not how fast")
    return lines


def table_markdown(plan: Plan, results: dict[str, dict]) -> str:
    """The header lines and the table, as the check prints it and writes table.md."""
    headers = ["part", "setting", "img/s", "wall s", "peak GiB", "train GFLOP/img",
               *[f"MFU @ {p:g}" for p in plan.peaks], "× diffusers (FLOP/s)", "goal"]
    lines = [*header_lines(plan, results), "",
             "| " + " | ".join(headers) + " |",
             "| " + " | ".join(["---", "---"] + ["---:"] * (len(headers) - 3) + ["---"]) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(plan, results)]
    return "\n".join(lines) + "\n"
