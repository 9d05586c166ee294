"""Training: datasets, pretext tasks, losses, metrics, the Ray Train loop."""
