"""qaexp's Hydra launcher plugin: `hydra/launcher=parallel` runs a sweep's jobs as concurrent
subprocesses on this machine, each on its own GPUs (or its own share of the CPU threads)."""
