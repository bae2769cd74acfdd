"""Sample-quality metrics on Inception pool features: KID, FID spread over blocks,
precision/recall/density/coverage, and the memorisation check.

Every function takes feature matrices [N, D] (numpy or torch), so the maths is
tested on Gaussians directly and the pipeline feeds it the 2048-d features
that the FID uses (`ddpm.metrics.fid.inception_features`).
"""
