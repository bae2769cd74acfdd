"""The autoencoder of latent diffusion (Rombach et al. 2022): a small KL-regularised
convolutional autoencoder trained here, or a pretrained diffusers `AutoencoderKL`,
behind one interface (`encode(x) -> (mean, logvar)`, `decode(z) -> x`).

The autoencoder itself, in dependency order: config (the `autoencoder` params
section), network (`Autoencoder`, `kl_divergence`), pretrained
(`PretrainedAutoencoder`), files (a saved autoencoder's folder), quality (PSNR
against the bicubic baseline), training. Beside them, the pipeline's use of it
(the stage, the encoded latents, decoding samples). Re-exports nothing, so
importing the config builds no network and imports neither Lightning nor diffusers.
"""
