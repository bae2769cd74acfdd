"""The autoencoder of latent diffusion (Rombach et al. 2022): a small KL-regularised
convolutional autoencoder trained here, or a pretrained diffusers `AutoencoderKL`,
behind one interface (`encode(x) -> (mean, logvar)`, `decode(z) -> x`).

Modules, in dependency order: config (the `autoencoder` params section), network
(`Autoencoder`, `kl_divergence`), pretrained (`PretrainedAutoencoder`), files (the
stage's output folder), quality (PSNR against the bicubic baseline), training.
Re-exports nothing, so importing the config builds no network.
"""
