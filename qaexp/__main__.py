"""Hydra entry point: `python -m qaexp [group=option ...] [key=value ...]`."""

from __future__ import annotations

import logging
import sys
from importlib.resources import files
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from qaexp.config import QAExpConfig, register_configs
from qaexp.errors import QAExpError

log = logging.getLogger("qaexp")

register_configs()


def run(cfg: DictConfig) -> float:
    """Run one job and return its best F1 (what a Hydra sweeper optimises)."""
    from qaexp.train import train

    settings: QAExpConfig = OmegaConf.to_object(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = train(settings, run_dir)
    log.info(
        "best epoch %s: EM %.2f F1 %.2f; results in %s",
        summary["best_epoch"], summary["best_exact_match"] or 0.0, summary["best_f1"] or 0.0, run_dir,
    )  # fmt: skip
    return summary["best_f1"] or 0.0


@hydra.main(version_base="1.3", config_path=str(files("qaexp.conf")), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except QAExpError as err:
        log.error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
