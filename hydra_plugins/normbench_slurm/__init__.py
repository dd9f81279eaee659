"""normbench's SLURM launcher, where Hydra looks for launchers (only under hydra_plugins).

The code is in normbench.slurm; configs/launcher/slurm.yaml names this class.
"""

from normbench.slurm import Launcher


class SlurmLauncher(Launcher):
    """normbench.slurm.Launcher, registered with Hydra."""
