"""qaexp's Hydra sweeper plugin: `hparams_search=optuna` (optuna_sweeper.py) runs an Optuna
study (ask and tell, SQLite storage in the sweep folder, pruning on the per-epoch F1) whose
trials are ordinary jobs started through the configured Hydra launcher."""
