"""Hydra configs of normbench (installed as the package normbench.configs)."""
