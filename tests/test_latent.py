"""Latent space end to end, in-process: the model config's latent shape, the encode step
(each image's latent and its mirror image's, the unit-variance scale), training batches
that flip by taking the mirror image's latent, the autoencoder stage's pretrained source,
and generation that decodes to images."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import tiny
from ddpm.autoencoder.decoding import copy_autoencoder
from ddpm.autoencoder.files import load_autoencoder, save_autoencoder
from ddpm.autoencoder.latents import LatentImages, encode_dataset, unit_variance_scale
from ddpm.autoencoder.network import Autoencoder
from ddpm.data.prepared import PreparedImages
from ddpm.errors import ConfigError, DataError
from ddpm.io.images import to_unit_range
from ddpm.training.data import TrainingImages
from ddpm.training.draws import draw

LATENT = {"space": "latent", "latent_factor": 4}  # 16 px images → 4 × 4 × 4 latents


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A tiny prepared set, an (untrained) autoencoder folder and its latents."""
    root = tmp_path_factory.mktemp("latent")
    prepared = tiny.prepared(root / "prepared", n=24)
    torch.manual_seed(0)
    codec = Autoencoder(factor=4, latent_channels=4, channels=[8, 16], num_res_blocks=1,
                        norm_groups=4).eval()
    with torch.no_grad():  # as if trained: the networks' part is zero (the shortcut) at first
        for head in (codec.encoder[-1][-1], codec.decoder[-1][-1]):
            head.weight.normal_(0.0, 0.1)
    save_autoencoder(codec, root / "autoencoder", {"space": "latent"})
    manifest = encode_dataset(codec, prepared, root / "latents", shard_size=7, batch_size=5,
                              device=torch.device("cpu"), autoencoder_sha256="x")
    return root, prepared, codec, manifest


def test_model_config_gives_the_latent_shape_and_refuses_what_cannot_encode():
    assert tiny.params(model=LATENT).model.data_shape == (4, 4, 4)
    assert tiny.params().model.data_shape == (3, 16, 16)
    tiny.assert_one_line_config_error(lambda: tiny.params(model={**LATENT, "img_size": 18}),
                                      "model.latent_factor")
    tiny.assert_one_line_config_error(
        lambda: tiny.params(model={**LATENT, "latent_factor": 6}), "model.latent_factor")


def test_encode_stores_each_image_and_its_mirror_image_scaled_to_unit_variance(encoded):
    root, prepared, codec, manifest = encoded
    images = PreparedImages(prepared, "train")
    latents = LatentImages(root / "latents", "train")
    assert len(latents) == len(images) and manifest["shape"] == [4, 4, 4]
    assert len(manifest["shards"]["train"]) == -(-len(images) // 7)  # 7 per shard
    scale = manifest["scale"]
    with torch.no_grad():
        for i in (0, len(images) - 1):
            x = to_unit_range(images[i][None])
            torch.testing.assert_close(latents[i], scale * codec.encode(x)[0][0])
            torch.testing.assert_close(latents.mirrored(i),
                                       scale * codec.encode(x.flip(-1))[0][0])
    # An autoencoder is not flip-equivariant: the mirror image's latent is not a flip.
    assert not torch.allclose(latents.mirrored(0), latents[0].flip(-1), atol=1e-3)
    both = latents.latents.double()
    assert abs(float(both.std(correction=0)) - 1.0) < 1e-6   # the scale's definition
    assert len(LatentImages(root / "latents", "holdout")) == manifest["counts"]["holdout"]


def test_a_collapsed_autoencoder_is_refused_not_divided_by_zero():
    with pytest.raises(DataError, match="collapsed"):
        unit_variance_scale(np.zeros((3, 2, 4, 2, 2), np.float32))


def test_training_flips_a_latent_by_taking_its_mirror_images_latent(encoded):
    root = encoded[0]
    latents = LatentImages(root / "latents", "train")
    data = TrainingImages(latents, seed=0, timesteps=1000, hflip=True)
    seen = set()
    for position in range(len(latents)):
        index = (position * 5) % len(latents)
        t, flip, noise = draw(0, 0, position, (4, 4, 4), 1000)
        batch = data[(0, position, index)]
        expected = latents.mirrored(index) if flip else latents[index]
        assert torch.equal(batch.images, expected) and int(batch.t) == t
        assert torch.equal(batch.noise, noise)
        seen.add(bool(flip))
    assert seen == {True, False}


def test_pretrained_source_is_saved_measured_and_checked_against_the_model(tmp_path, encoded):
    from diffusers import AutoencoderKL

    from ddpm.autoencoder.stage import build_autoencoder
    from ddpm.reporting.config import params_from_dict

    prepared = encoded[1]
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8,
                        latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3)
    vae.save_pretrained(tmp_path / "vae")
    raw = tiny.raw_params(model=LATENT, autoencoder={"source": "pretrained", "eval_images": 4,
                                                     "pretrained": str(tmp_path / "vae")})
    config = params_from_dict(raw)
    out = tmp_path / "autoencoder"
    summary = build_autoencoder(config.model, config.autoencoder, prepared, out,
                                tmp_path / "state", tmp_path / "live")
    n = min(4, len(PreparedImages(prepared, "holdout")))   # eval_images, or all there are
    assert n >= 2 and summary["n"] == n and summary["latent_shape"] == [4, 4, 4]
    assert json.loads((out / "quality.json").read_text())["psnr_db"] == summary["psnr_db"]
    assert np.load(out / "holdout_reconstructions.npy").shape == (n, 16, 16, 3)
    assert "psnr_db" in json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert load_autoencoder(out).factor == 4
    wrong = replace(config.model, latent_factor=2)
    with pytest.raises(ConfigError, match="model.latent_factor = 2") as err:
        build_autoencoder(wrong, config.autoencoder, prepared, tmp_path / "again",
                          tmp_path / "state2", tmp_path / "live2")
    assert "\n" not in str(err.value)


def test_a_latent_model_generates_decoded_images_without_clipping_latents(tmp_path, encoded):
    from ddpm.sampling.generate import load_generator

    root, _, codec, manifest = encoded
    models = tiny.untrained_model(tmp_path / "models", **LATENT)
    config = json.loads((models / "config.json").read_text())
    config["latent"] = {"scale": manifest["scale"], "factor": 4, "autoencoder_sha256": "x"}
    (models / "config.json").write_text(json.dumps(config))
    copy_autoencoder(root / "autoencoder", models)
    sample = replace(tiny.params().sample, n=3, steps=2, sampler="ddim", precision="32-true")
    engine = load_generator(models, sample)
    assert engine.shape == (4, 4, 4) and engine.image_size == 16
    assert sample.clip_x0 and not engine.sample.clip_x0   # latents have no fixed range
    images = engine.images(range(3))
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert images.std() > 1                               # decoded pictures, not a constant
    # The same latents, decoded by hand, are these images.
    from ddpm.io.images import to_uint8
    from ddpm.sampling.generate import run_sampler
    z = run_sampler(engine.sampler_net, engine.schedule, engine.sample, engine.prediction,
                    range(3), (4, 4, 4), engine.device).images
    with torch.no_grad():
        by_hand = to_uint8(codec.decode(z / manifest["scale"])).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(by_hand, images)
