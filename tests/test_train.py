"""Training: gradient accumulation equivalence, resume after SIGKILL, NaN stop, what
train/loss and train/mse hold (two processes: tests/test_ddp.py)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

import tiny
from ddpm.training.data import FaceDataModule
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.training.run import (CHECKPOINT, build_trainer, fingerprint, read_checkpoint,
                               resume_path, train)
from ddpm.training.system import DiffusionSystem, NonFiniteLoss
from ddpm.training.callbacks import ResumeCheckpoint

REPO = Path(__file__).resolve().parents[1]


class FixedNoiseSystem(DiffusionSystem):
    """The diffusion loss with ε and t fixed per image (functions of the image itself),

    so a micro-batch split cannot change which noise an image gets: only the
    accumulation arithmetic can make two runs differ.
    """

    def loss(self, batch):
        from ddpm.diffusion.forward import TrainingLoss, prediction_target, q_sample
        x0 = batch.images
        t = (x0.flatten(1).sum(1).abs() * 97).long() % self.schedule.timesteps   # [B]
        noise = torch.sin(x0 * 12.9898 + 78.233)                                  # [B,3,H,W]
        x_t = q_sample(self.schedule, x0, t, noise)
        target = prediction_target(self.schedule, x0, noise, t, "eps")
        loss = torch.nn.functional.mse_loss(self.net(x_t, t), target)
        return TrainingLoss(loss, loss.detach())


class CaptureGrads(L.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = [p.grad.detach().clone() for p in pl_module.net.parameters()]


def one_update(prepared, batch_size, accumulate):
    params = tiny.params(train={"batch_size": batch_size, "accumulate_grad_batches": accumulate,
                                "max_steps": 1, "hflip": False, "grad_clip": 0.5})
    L.seed_everything(0, verbose=False)
    system = FixedNoiseSystem(params.model, params.diffusion, params.train)
    before = [p.detach().clone() for p in system.net.parameters()]
    data = FaceDataModule(prepared, batch_size=batch_size, num_workers=0, val_images=8,
                          timesteps=1000, seed=0, hflip=False)
    capture = CaptureGrads()
    trainer = build_trainer(params.train, logger=False, callbacks=[capture], progress=False)
    trainer.fit(system, datamodule=data)
    after = [p.detach() for p in system.net.parameters()]
    return before, capture.grads, after, system.ema.num_updates


def test_batch_8_times_accumulate_4_equals_batch_32(tmp_path):
    # 32 training images: one batch of 32, or four micro-batches of 8 covering the same 32.
    prepared = tiny.prepared(tmp_path / "data", n=35)   # 35 demo keys: 32 train + 3 holdout
    from ddpm.data.prepared import PreparedImages
    assert len(PreparedImages(prepared, "train")) == 32
    b0, g32, p32, ema32 = one_update(prepared, 32, 1)
    b1, g8, p8, ema8 = one_update(prepared, 8, 4)
    assert all(torch.equal(x, y) for x, y in zip(b0, b1))            # same initialisation
    assert all(torch.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(g32, g8))
    # Adam's first step moves each weight by lr·g/(|g| + ε): where |g| is near float
    # rounding, the sign of g, and so the step, is rounding's choice. Compare the steps
    # where the gradient is well above it.
    compared = 0
    for x, y, g in zip(p32, p8, g32):
        sure = g.abs() > 1e-5
        assert torch.allclose(x[sure], y[sure], rtol=1e-4, atol=1e-6)
        compared += int(sure.sum())
    assert compared > 0.9 * sum(g.numel() for g in g32)   # 97% of the weights (seen)
    assert any(not torch.equal(x, y) for x, y in zip(b0, p32))        # an update happened
    assert ema32 == ema8 == 1                                        # EMA once per optimizer step


def test_epoch_order_is_a_function_of_seed_and_epoch_dealt_to_ranks_and_skips_what_was_taken():
    from ddpm.training.data import EpochOrder
    ranks = [EpochOrder(21, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for order in ranks:
        order.set_epoch(4)
    shares = [list(order) for order in ranks]
    assert len(shares[0]) == len(shares[1]) == 10
    assert {epoch for share in shares for epoch, _, _ in share} == {4}
    indices = [[index for _, _, index in share] for share in shares]
    positions = [[position for _, position, _ in share] for share in shares]
    assert not set(indices[0]) & set(indices[1])
    assert positions == [list(range(0, 20, 2)), list(range(1, 20, 2))]   # dealt round-robin
    # One process sees the same (position, index) pairs: a position names one image
    # (two ranks leave out the odd 21st, so that they step together).
    single = EpochOrder(21, seed=3)
    single.set_epoch(4)
    whole = {(position, index) for _, position, index in single}
    assert whole - {(p, i) for share in shares for _, p, i in share} == {max(whole)}
    assert indices[0] == EpochOrder(21, seed=3, rank=0, world_size=2).indices(4)
    assert indices[0] != ranks[0].indices(5)                      # each epoch its own order
    ranks[0].skip = 6
    assert list(ranks[0]) == shares[0][6:]                        # skips once ...
    assert list(ranks[0]) == shares[0]                            # ... then whole epochs again


class Keys(torch.utils.data.Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, key):
        return torch.tensor(key)


def test_loader_resumed_after_an_epochs_last_batch_starts_the_next_epoch():
    from ddpm.training.data import EpochOrder, ResumableLoader
    order = EpochOrder(20, seed=0)
    loader = ResumableLoader(Keys(), order, lambda: 0, batch_size=4, drop_last=True)
    loader.load_state_dict({"epoch": 2, "batches": 3})
    assert [b[:, 2].tolist() for b in loader] == [order.indices(2)[12:16],
                                                  order.indices(2)[16:20]]
    loader.load_state_dict({"epoch": 2, "batches": 5})
    assert [b[0, :2].tolist() for b in loader][:1] == [[3, 0]]  # epoch 3, from position 0
    loader.load_state_dict({"epoch": 2, "batches": 5})
    assert order.epoch == 3 and len(list(loader)) == 5


def test_checkpoint_with_other_params_is_set_aside_with_a_reason(tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    constant = {"lr_schedule": "constant"}
    old = fingerprint(tiny.params(train={"lr": 1e-3, **constant}), "abc")
    new = fingerprint(tiny.params(train={"lr": 2e-4, "max_steps": 999, **constant}), "abc")
    torch.save({"ddpm_fingerprint": old, "global_step": 5}, state / CHECKPOINT)
    assert resume_path(state, old) == state / CHECKPOINT      # same params: resumable
    # A constant learning rate: more steps continue the run ...
    assert fingerprint(tiny.params(train={"lr": 1e-3, "max_steps": 999, **constant}),
                       "abc") == old
    # ... a cosine one is a function of max_steps, so more steps are another run.
    cosine = {"lr": 1e-3, "lr_schedule": "cosine"}
    assert (fingerprint(tiny.params(train={**cosine, "max_steps": 999}), "abc")
            != fingerprint(tiny.params(train=cosine), "abc"))
    assert resume_path(state, new) is None
    out = capsys.readouterr().out
    assert "set aside" in out and "train.lr 0.001 -> 0.0002" in out
    assert not (state / CHECKPOINT).exists()
    assert len(list(state.glob("set-aside-*.ckpt"))) == 1          # kept, not deleted


class LeavesAMarker:
    """Unpickling this creates a folder: the harmless stand-in for a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.mkdir, (str(self.marker),))


def _truncated_checkpoint(path: Path) -> None:
    torch.save({"global_step": 5, "weights": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["pickle", "truncated", "empty", "garbage", "no_step"])
def test_damaged_or_hostile_checkpoint_is_set_aside_with_one_line_and_never_run(
        tmp_path, capsys, damage):
    state, marker = tmp_path / "state", tmp_path / "marker"
    state.mkdir()
    ckpt = state / CHECKPOINT
    expected = fingerprint(tiny.params(), "abc")
    if damage == "pickle":
        torch.save({"global_step": 5, "ddpm_fingerprint": expected,
                    "x": LeavesAMarker(marker)}, ckpt)
    elif damage == "truncated":
        _truncated_checkpoint(ckpt)
    elif damage == "no_step":
        torch.save([1, 2, 3], ckpt)
    else:
        ckpt.write_bytes(b"" if damage == "empty" else bytes(range(256)) * 40)
    assert resume_path(state, expected) is None
    assert not marker.exists()                                  # nothing ran
    assert not ckpt.exists() and len(list(state.glob("set-aside-*.ckpt"))) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"set aside {ckpt} as set-aside-")
    assert lines[0].endswith("training starts from scratch")


def test_checkpoints_set_aside_in_the_same_second_are_all_kept(tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    for _ in range(3):
        (state / CHECKPOINT).write_bytes(b"garbage")
        assert resume_path(state, {}) is None
    assert len(list(state.glob("set-aside-*.ckpt"))) == 3


class NanAfter(FixedNoiseSystem):
    def loss(self, x0):
        terms = super().loss(x0)
        return terms._replace(loss=terms.loss * float("nan")) if self.global_step >= 3 else terms


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    prepared = tiny.prepared(tmp_path / "data", n=40)
    params = tiny.params(train={"max_steps": 10, "checkpoint_every": 2})
    system = NanAfter(params.model, params.diffusion, params.train)
    data = FaceDataModule(prepared, batch_size=8, num_workers=0, val_images=8, timesteps=1000,
                          seed=0, hflip=True)
    ckpt = tmp_path / "state" / CHECKPOINT
    trainer = build_trainer(params.train, logger=False,
                            callbacks=[ResumeCheckpoint(ckpt, 2, {"x": 1})], progress=False)
    with pytest.raises(NonFiniteLoss, match="at step 3"):
        trainer.fit(system, datamodule=data)
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2


class CaptureSteps(L.Callback):
    """Per training batch: the batch as `training_step` gets it, a copy of the network
    before the update, then the metrics the step logged."""

    def __init__(self):
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append({"batch": type(batch)(*(b.detach().clone() for b in batch)),
                           "net": copy.deepcopy(pl_module.net)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        self.steps[-1].update(loss=float(metrics["train/loss"]), mse=float(metrics["train/mse"]))


def test_train_mse_is_the_unweighted_mse_of_the_batch_and_reaches_dvclive(tmp_path):
    """train/mse is the batch's plain mean squared error of the v target (what val/loss
    measures), train/loss the same errors min-SNR-weighted; both recomputed here from
    the schedule's ᾱ, t and ε re-drawn from each image's (seed, epoch, position), and
    the network as it was at that step."""
    from ddpm.training.draws import draw
    params = tiny.params(train={"max_steps": 10, "hflip": False, "val_every": 100,
                                "sample_every": 100, "checkpoint_every": 100},
                         sample={"sampler": "ddim", "steps": 2})  # end-of-run grid: no diffusers
    diffusion = params.diffusion
    assert (diffusion.prediction, diffusion.loss_weighting) == ("v", "min_snr")
    capture = CaptureSteps()
    live = tmp_path / "dvclive"
    train(params, tiny.prepared(tmp_path / "data", n=40), tmp_path / "models",
          tmp_path / "state", live, extra_callbacks=[capture], progress=False)
    alpha_bar = NoiseSchedule.from_name(diffusion.schedule, diffusion.timesteps).alphas_cumprod
    assert len(capture.steps) == 10
    for step in capture.steps:
        x0, epochs, positions = step["batch"].images, step["batch"].epoch, step["batch"].position
        redrawn = [draw(params.train.seed, int(e), int(p), x0.shape[1:], diffusion.timesteps)
                   for e, p in zip(epochs, positions)]
        t = torch.tensor([d.t for d in redrawn])
        eps = torch.stack([d.noise for d in redrawn])
        ab = alpha_bar[t].reshape(-1, 1, 1, 1)                             # float64 [B,1,1,1]
        x_t = (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).float()
        v = ab.sqrt() * eps - (1 - ab).sqrt() * x0                         # Salimans & Ho §4
        with torch.no_grad():
            squared = (step["net"](x_t, t).double() - v) ** 2
        snr = ab.flatten() / (1 - ab.flatten())
        weight = snr.clamp(max=diffusion.min_snr_gamma) / (snr + 1)        # min-SNR-γ for v
        assert step["mse"] == pytest.approx(squared.mean().item(), rel=1e-5)
        assert step["loss"] == pytest.approx(
            (squared.flatten(1).mean(1) * weight).mean().item(), rel=1e-5)
        assert step["loss"] < 0.9 * step["mse"]  # the two differ: a swap would show
    # DVCLive: the plot file every log_every_n_steps (10) optimizer steps, and the summary.
    logged = pd.read_csv(live / "plots/metrics/train/mse.tsv", sep="\t")
    assert logged["step"].tolist() == [9]
    assert logged["mse"].iloc[0] == pytest.approx(capture.steps[9]["mse"], rel=1e-6)
    summary = json.loads((live / "metrics.json").read_text())["train"]
    assert summary["mse"] == pytest.approx(capture.steps[-1]["mse"], rel=1e-6)
    assert summary["loss"] == pytest.approx(capture.steps[-1]["loss"], rel=1e-6)


def run_stage(tmp_path: Path, params_file: Path, out: str = "", **popen):
    """The train stage in a subprocess, on this checkout's code, one thread (deterministic)."""
    out_dir = tmp_path / out if out else tmp_path
    cmd = [sys.executable, "-m", "stages.train", "--params", str(params_file),
           "--data", str(tmp_path / "data"), "--models", str(out_dir / "models"),
           "--state", str(out_dir / "state"), "--live", str(out_dir / "live")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env=env, **popen)


def model_files(models: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(models.iterdir())}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_ends_with_the_same_bytes_as_an_uninterrupted_run(tmp_path):
    # 59 training images in batches of 8: 7 batches an epoch, so checkpoints at steps
    # 10, 15, 20, 25 all fall mid-epoch and the resumed run must continue the epoch's order.
    tiny.prepared(tmp_path / "data", n=64)
    params_file = tiny.write_params(tmp_path / "params.yaml",
                                    train={"max_steps": 30, "checkpoint_every": 5,
                                           "val_every": 10, "sample_every": 1000})
    reference = run_stage(tmp_path, params_file, "reference")
    output, _ = reference.communicate(timeout=900)
    assert reference.returncode == 0, output

    ckpt = tmp_path / "state" / CHECKPOINT
    killed_at = tiny.kill_after_checkpoint(run_stage(tmp_path, params_file), ckpt, 10)
    killed_seconds = read_checkpoint(ckpt)[0]["train_seconds"]
    assert killed_at < 30 and killed_at % 7 != 0
    rerun = run_stage(tmp_path, params_file)
    output, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, output
    assert f"at step {killed_at}" in output

    final = read_checkpoint(ckpt)[0]
    assert final["global_step"] == 30
    # A fresh optimizer would count only the steps since the restart.
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {30}
    assert final["ema_updates"] == 30
    # Training time adds up over the killed run and the resumed one.
    assert final["train_seconds"] > killed_seconds > 0
    assert model_files(tmp_path / "models") == model_files(tmp_path / "reference" / "models")


def test_shared_trained_model_has_learned_the_drawings(trained_tiny_model, tmp_path):
    """conftest's trained tiny UNet predicts the v target on unseen demo drawings far
    better than the same network untrained (seed 0): the tests that use it see a
    network that learned something."""
    from ddpm.diffusion.forward import loss_per_timestep
    from ddpm.metrics.inception_standin import demo_drawings
    from ddpm.models.checkpoint import load_model

    trained, schedule, _ = load_model(trained_tiny_model)
    untrained, _, _ = load_model(tiny.untrained_model(tmp_path / "untrained"))
    x0 = torch.from_numpy(demo_drawings(16, seed=7, size=tiny.IMG)).permute(0, 3, 1, 2) / 127.5 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731  the best constant guess of v
    with torch.no_grad():
        loss = {name: loss_per_timestep(net, schedule, x0, [50, 300, 700], noise, "v").mean()
                for name, net in (("trained", trained), ("untrained", untrained),
                                  ("zero", zero))}
    # Seen after 40 steps: trained 0.59, untrained 0.83, zero 0.75.
    assert loss["trained"] < 0.8 * min(loss["untrained"], loss["zero"]), loss
