"""Images from a trained model: the generate stage's shards and `ddpm sample`/`ddpm trajectory`."""
