"""Few-step ODE solvers: DPM-Solver++ (multistep) and UniPC, wrapping diffusers' schedulers.

Both solve the probability-flow ODE with the data prediction x̂_0 (Lu et al. 2022
"DPM-Solver++", Algorithm 2; Zhao et al. 2023 "UniPC", B(h) = e^h − 1), one network
evaluation per timestep, and are deterministic given x_T: the per-sample generators
only ever drew x_T. The update rules are diffusers' (`DPMSolverMultistepScheduler`,
`UniPCMultistepScheduler`); what this module adds is how they are fed.

- Timesteps are this project's (`ddim_timesteps(T, steps, spacing)`), so a spacing means
  the same for every sampler and DPM-Solver++ of order 1 *is* DDIM with η = 0 on the same
  grid (checked by the tests). The generate stage passes `sample.solver_spacing`, default
  "trailing" (starts at T − 1, ends at T/S − 1). On DDIM's "uniform" grid the last
  interval, T/S → 0, is a jump in λ several times the one before, and the second-order
  extrapolation across it overshoots (on Gaussian data and the linear schedule, 10 steps
  give a std 38% too large, against 3% with "logsnr", uniform in log SNR). "logsnr" as
  built before issue 23 spent 4 of 10 steps at t ≥ 994 under the cosine schedule and
  sampled two-mode toy data about 3× worse than "trailing" (tests/test_sampler_grids.py).
  After the last timestep the solver steps to σ = 0 (diffusers' `final_sigmas_type="zero"`),
  a first-order step whose result is exactly the last x̂_0.
- σ_t = √((1 − ᾱ_t)/ᾱ_t) at those timesteps comes from this project's float64 schedule,
  written over what `set_timesteps` computed from diffusers' float32 ᾱ (which, for t
  near 0 where 1 − ᾱ_t ≈ 1e-4, is off by ~1e-3 relative).
- The network's output goes through the `Denoiser`, the x̂_0 (and its clipping to [−1, 1]
  with `clip_x0`) every sampler here uses, and is handed over as x̂_0
  (`prediction_type="sample"`). That is the same as giving diffusers the raw output
  with `prediction_type` epsilon / v_prediction / sample and `thresholding=True`,
  `sample_max_value=1.0` (its dynamic threshold s is then clamped to exactly 1, a plain
  clip), up to float32 rounding (tested), without a per-step quantile over every image,
  and the trajectory's x̂_0 frames are exactly what the solver used.
- `lower_order_final=True` (diffusers' default): below 15 steps the last steps drop to
  lower order, which the DPM-Solver++ paper recommends for few steps.

diffusers is imported on first use: it takes seconds to import and DDPM/DDIM runs do
not need it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.forward import Model
from ddpm.diffusion.loop import SampleResult, sample_loop
from ddpm.diffusion.samplers import check_generators, ddim_timesteps
from ddpm.diffusion.schedules import NoiseSchedule


def solver_sigmas(schedule: NoiseSchedule, taus: np.ndarray) -> torch.Tensor:
    """σ = √((1 − ᾱ)/ᾱ) at `taus` then 0, float32 [S + 1]: diffusers' `sigmas` layout."""
    alpha_bar = schedule.alphas_cumprod[torch.from_numpy(taus)]  # float64 [S]
    sigmas = torch.cat([((1 - alpha_bar) / alpha_bar).sqrt(), alpha_bar.new_zeros(1)])
    return sigmas.to(torch.float32)


def prepare_scheduler(scheduler, schedule: NoiseSchedule, taus: np.ndarray):
    """Point a fresh diffusers multistep scheduler at `taus` (descending) with float64 σ."""
    with warnings.catch_warnings():  # diffusers 0.42's np.array(tensor) under numpy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        scheduler.set_timesteps(len(taus))  # resets the multistep history
    scheduler.timesteps = torch.from_numpy(taus.astype(np.int64))
    scheduler.sigmas = solver_sigmas(schedule, taus)
    scheduler.set_begin_index(0)
    return scheduler


def dpm_solver_pp_scheduler(schedule: NoiseSchedule, taus: np.ndarray, order: int = 2):
    """diffusers' `DPMSolverMultistepScheduler` as DPM-Solver++(order)M on x̂_0, at `taus`."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=schedule.timesteps, trained_betas=schedule.betas.numpy(),
        solver_order=order, prediction_type="sample", thresholding=False,
        algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero")
    return prepare_scheduler(scheduler, schedule, taus)


def unipc_scheduler(schedule: NoiseSchedule, taus: np.ndarray, order: int = 2):
    """diffusers' `UniPCMultistepScheduler` as UniPC-(order) with B(h) = e^h − 1, on x̂_0."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=schedule.timesteps, trained_betas=schedule.betas.numpy(),
        solver_order=order, prediction_type="sample", thresholding=False, predict_x0=True,
        solver_type="bh2", lower_order_final=True, final_sigmas_type="zero")
    return prepare_scheduler(scheduler, schedule, taus)


@dataclass(frozen=True)
class SchedulerStepper:
    """A prepared diffusers multistep scheduler (`prepare_scheduler`) as a stepper for the
    one loop: its `step`, fed x̂_0, keeps the multistep history between calls."""

    scheduler: Any
    timesteps: list[int]

    def step(self, i: int, x: torch.Tensor, x0_hat: torch.Tensor,
             eps_hat: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(x0_hat, self.timesteps[i], x).prev_sample  # last: x0_hat


def dpm_solver_pp_sample(model: Model, schedule: NoiseSchedule, noise: torch.Tensor,
                         generators: Sequence[torch.Generator], *, steps: int,
                         spacing: str = "uniform", prediction: str = "eps",
                         clip_x0: bool = True, trajectory_frames: int = 0,
                         progress: Callable[[], object] | None = None,
                         order: int = 2) -> SampleResult:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) over `steps` network evaluations.

    With λ = log(√ᾱ/√(1 − ᾱ)), h_i = λ_{t_i} − λ_{t_{i−1}}, r_i = h_{i−1}/h_i and
    m_j = x̂_0(x_{t_j}, t_j), each step is
        x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i}(e^{−h_i} − 1) D_i,
        D_i = (1 + 1/(2r_i)) m_{i−1} − (1/(2r_i)) m_{i−2},
    with D_i = m_{i−1} (first order, i.e. DDIM) at the first step and at the last
    (down to σ = 0); σ, α here are the VP σ_t = √(1 − ᾱ_t), α_t = √ᾱ_t.
    `noise` is x_T; `generators` are only checked (nothing random is drawn).
    `order` 1 is DDIM with η = 0; 3 is DPM-Solver++(3M).
    """
    check_generators(noise, generators)
    taus = ddim_timesteps(schedule.timesteps, steps, spacing, schedule=schedule)  # descending
    stepper = SchedulerStepper(dpm_solver_pp_scheduler(schedule, taus, order), taus.tolist())
    return sample_loop(stepper, Denoiser(model, schedule, prediction, clip_x0), noise,
                       trajectory_frames=trajectory_frames, progress=progress)


def unipc_sample(model: Model, schedule: NoiseSchedule, noise: torch.Tensor,
                 generators: Sequence[torch.Generator], *, steps: int,
                 spacing: str = "uniform", prediction: str = "eps", clip_x0: bool = True,
                 trajectory_frames: int = 0,
                 progress: Callable[[], object] | None = None, order: int = 2) -> SampleResult:
    """UniPC (Zhao et al. 2023): UniP-2 predictor + UniC corrector, B(h) = e^h − 1 ("bh2").

    The corrector reuses the network evaluation at the predicted point, so the cost
    stays one evaluation per timestep (`steps` in all); no corrector after the last.
    `noise` is x_T; `generators` are only checked (nothing random is drawn).
    """
    check_generators(noise, generators)
    taus = ddim_timesteps(schedule.timesteps, steps, spacing, schedule=schedule)  # descending
    stepper = SchedulerStepper(unipc_scheduler(schedule, taus, order), taus.tolist())
    return sample_loop(stepper, Denoiser(model, schedule, prediction, clip_x0), noise,
                       trajectory_frames=trajectory_frames, progress=progress)
