"""The run's report (`report`) and `ddpm compare` across experiments (`compare`)."""
