"""Diffusion maths: noise schedules, the forward process and losses, samplers.

Modules in dependency order: `schedules` → `forward` → `denoiser` (the network as
(x̂_0, ε̂), whatever it predicts) → `loop` (the one sampling loop, which runs a sampler's
stepper) → `samplers` (DDPM, DDIM) → `solvers` (DPM-Solver++, UniPC) → `registry`
(`sample.sampler` → function, and `sample_images`, the one entry point); `likelihood`
(the variational bound in bits/dim) sits beside the samplers; `config` is params.yaml's
diffusion section.
Nothing here knows about Lightning or DVC.
"""

from ddpm.diffusion.forward import (loss_per_timestep, predict_x0_and_eps, prediction_target,
                                    q_sample, training_loss)
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.likelihood import BoundEstimate, bits_per_dim_bound
from ddpm.diffusion.loop import SampleResult, sample_loop
from ddpm.diffusion.registry import SAMPLERS, sample_images, sampler_nfe, takes_steps
from ddpm.diffusion.samplers import (ddim_sample, ddim_timesteps, ddpm_sample, initial_noise,
                                     sample_generators)
from ddpm.diffusion.schedules import (SCHEDULES, NoiseSchedule, cosine_betas, extract,
                                      linear_betas)

__all__ = [
    "SCHEDULES", "NoiseSchedule", "cosine_betas", "extract", "linear_betas",
    "loss_per_timestep", "predict_x0_and_eps", "prediction_target", "q_sample", "training_loss",
    "Denoiser", "SampleResult", "sample_loop", "ddim_sample", "ddim_timesteps", "ddpm_sample",
    "initial_noise", "sample_generators", "SAMPLERS", "sample_images", "sampler_nfe",
    "takes_steps", "BoundEstimate", "bits_per_dim_bound",
]
