"""qaexp's Hydra launcher plugins. Hydra only instantiates launchers defined in the
`hydra_plugins` namespace, hence this package:

- `hydra/launcher=parallel` (parallel_launcher.py) runs a sweep's jobs as concurrent
  subprocesses on this machine, each on its own GPUs (or its own share of the CPU threads);
- `hydra/launcher=slurm` (slurm.py) submits them to SLURM through submitit.
"""
