"""Names of the autoencoder stage's measurement files, for the stages that read them
(fid, report) without importing the autoencoder's code."""

QUALITY = "quality.json"                          # holdout PSNR beside the bicubic baseline
RECONSTRUCTIONS = "holdout_reconstructions.npy"   # uint8 [N, H, W, 3], for the reconstruction FID
GRID = "reconstructions.png"                      # originals, bicubic, reconstructions
