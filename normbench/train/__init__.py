"""Training: the loop, distributed processes and emulated GPUs, checkpoints, lr schedules."""
