"""The evaluation stages: the three FID stages (fid_ref, fid, fid_sweep) and timestep_loss."""
