#!/usr/bin/env bash
# The training-recipe ablation (docs/recipe.md): one queued
# `dvc exp run` per variant on real CelebA faces, then the comparison table.
#
#   FACES=/abs/path/to/faces bash scripts/ablation.sh       # queue and run (hours on 2 CPU cores)
#   ddpm compare --rev <commit the experiments were queued on> --prefix abl- --out reports/ablation.md
#
# Every run: 800 optimizer steps x batch 32 (25,600 images seen), 32 px, celeba crop,
# the 0.78 M-parameter UNet (channels [32, 64, 128], the default when this ran), 250 DDIM-50 (eta 0) samples from the EMA weights,
# FID against the training split (stand-in Inception unless real weights are installed).
# FACES must be an absolute path: queued experiments run in a temporary copy of the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
FACES=${FACES:?set FACES to an absolute path of a folder of CelebA aligned images}
COMMON="-S data.source=$FACES -S data.crop=celeba -S model.channels=[32,64,128] -S train.max_steps=800 -S sample.spacing=uniform -S sample.solver_spacing=logsnr -S sample.n=250 -S sample.sweep_steps=[10] -S sample.sweep_n=50 -S analysis.t_points=50"
# The recipe under test (the defaults since this ablation), spelt out so a later change
# of defaults does not change what these rows mean.
R="-S model.time_injection=scale_shift -S model.zero_init=true -S diffusion.schedule=cosine -S diffusion.prediction=v -S diffusion.loss_weighting=min_snr -S train.lr=0.001 -S train.lr_schedule=cosine"
# DDPM's recipe, the defaults before it.
DDPM="-S model.time_injection=add -S model.zero_init=false -S diffusion.schedule=linear -S diffusion.prediction=eps -S diffusion.loss_weighting=none -S train.lr=0.0002 -S train.lr_schedule=constant"
q() { name=$1; shift; dvc exp run --queue -n "$name" $COMMON "$@"; }
q abl-recipe $R
q abl-old-defaults $DDPM
q abl-recipe-seed1 $R -S train.seed=1
q abl-eps $R -S diffusion.prediction=eps
q abl-lr2e-4 $R -S train.lr=0.0002
q abl-no-minsnr $R -S diffusion.loss_weighting=none
q abl-add $R -S model.time_injection=add
q abl-dit $R -S model.arch=dit
q abl-unetpp $R -S model.arch=unetpp
# Each experiment uses one torch thread; two run at once on a 2-core machine.
OMP_NUM_THREADS=1 dvc exp run --run-all -j 2
