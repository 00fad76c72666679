"""What the console shows: qaexp's own lines, and only warnings and errors from libraries.

Everything still reaches the run's qaexp.log (Hydra's file handler takes every record); the
console handler carries a `ConsoleFilter` (conf/config.yaml's hydra.job_logging), and the
libraries that print on their own (transformers' handler and load report, progress bars of
datasets, transformers and the Hub) are routed into logging or turned off by
`quiet_libraries`.
"""

from __future__ import annotations

import logging

# The lowest level a logger's records need to reach the console, by logger name prefix (the
# longest matching prefix wins; "" is every other logger). transformers' load report (a
# warning from transformers.modeling_utils listing
# the keys of a fresh QA head) is expected for a base checkpoint: qaexp
# says so in one line instead, and the table stays in qaexp.log.
CONSOLE_LEVELS = {
    "": "WARNING",
    "qaexp": "INFO",
    "hydra_plugins.qaexp_launcher": "INFO",
    "transformers.modeling_utils": "ERROR",
}


class ConsoleFilter(logging.Filter):
    """Pass a record to the console when it reaches its logger's level in `levels`."""

    def __init__(self, levels: dict[str, str] | None = None):
        super().__init__()
        merged = {**CONSOLE_LEVELS, **(levels or {})}
        # Longest prefix first, so "qaexp.x" finds "qaexp" before "".
        self.levels = sorted(
            ((name, logging.getLevelName(level.upper())) for name, level in merged.items()),
            key=lambda item: -len(item[0]),
        )

    def filter(self, record: logging.LogRecord) -> bool:
        for name, level in self.levels:
            if not name or record.name == name or record.name.startswith(f"{name}."):
                return record.levelno >= level
        return True


def quiet_libraries() -> None:
    """Send transformers' messages through logging (so the console filter and qaexp.log see
    them) and turn off the libraries' own progress bars (loading weights, generating a
    dataset split, mapping, writing shards); qaexp keeps one bar per epoch."""
    import datasets
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
