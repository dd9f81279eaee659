"""Where results go: run directories (the record of each cell) and experiment trackers (W&B)."""
