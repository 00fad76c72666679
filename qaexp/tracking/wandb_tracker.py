"""Weights & Biases: one wandb run per job, written inside the job's run directory.

One job is one wandb run also across resumes: the run's id is kept in `RUN_DIR/wandb/run_id`,
and a job that continues its own saved state (trainer.resume, a SLURM requeue) continues
that run (`resume="allow"`), logging from the optimizer step where it stopped; every row is
logged at its optimizer step, so the run's step counter continues too (an offline run gets a
second offline-run folder with the same id: `wandb sync` uploads both into the one run).

Never a login prompt: `logger.mode=auto` logs offline when no credentials are found and says,
in one log line, where the offline run is and the `wandb sync` command that uploads it. The
run is always finished (from the training loop's `finally`), with a non-zero exit code when
the job failed, so the jobs of a sweep never merge into one run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from qaexp.config import LoggerConfig, LoggerMode
from qaexp.errors import QAExpError
from qaexp.tracking.base import RunLabels, Tracker, epoch_metrics, summary_metrics
from qaexp.tracking.rundir import write_text_atomic

log = logging.getLogger(__name__)

EXIT_CODES = {"completed": 0, "pruned": 0, "failed": 1, "interrupted": 130}
RUN_ID_FILE = "run_id"  # in RUN_DIR/wandb/: the job's wandb run, continued on resume
CREDENTIAL_VARIABLES = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE")


def wandb_credentials_found() -> bool:
    """Whether wandb has credentials (environment, ~/.netrc or its settings files).

    Uses wandb's own lookup with prompting switched off and without storing anything in the
    session, so it never asks for a key and never writes a file.
    """
    if any(os.environ.get(name) for name in CREDENTIAL_VARIABLES):
        return True
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    base_url = wandb_setup.singleton().settings.base_url
    try:
        auth = wbauth.authenticate_session(
            host=base_url, source="qaexp", prompt=False, update_session=False
        )
    except AuthenticationError as err:
        raise QAExpError(
            f"The W&B credentials for {base_url} are not valid ({err}). Fix them with "
            "`wandb login --relogin`, or log without them: logger.mode=offline."
        ) from err
    return auth is not None


def resolve_mode(mode: LoggerMode) -> str:
    """The wandb mode to run in: `auto` follows WANDB_MODE when it is set, else goes online
    with credentials and offline without; `online` without credentials is an error (wandb
    would prompt for a key, which hangs a batch job)."""
    if mode is LoggerMode.auto:
        requested = os.environ.get("WANDB_MODE", "")
        if requested not in {m.value for m in LoggerMode} - {"auto"}:
            return "online" if wandb_credentials_found() else "offline"
        mode = LoggerMode(requested)
    if mode is LoggerMode.online and not wandb_credentials_found():
        raise QAExpError(
            "logger.mode=online, but no W&B credentials were found (WANDB_API_KEY, ~/.netrc "
            "or wandb's settings). Run `wandb login` or set WANDB_API_KEY; or use "
            "logger.mode=offline (upload later with `wandb sync`) or logger.mode=auto."
        )
    return mode.value


def define_metrics(run: Any) -> None:
    """x axes (optimizer step for train/*, epoch for eval/* and epoch/*) and max summaries."""
    run.define_metric("global_step")
    run.define_metric("epoch")
    run.define_metric("train/*", step_metric="global_step")
    run.define_metric("epoch/*", step_metric="epoch")
    run.define_metric("eval/*", step_metric="epoch")
    for key in ("eval/exact_match", "eval/f1"):
        run.define_metric(key, step_metric="epoch", summary="max")


class WandbTracker(Tracker):
    """Sends one job's numbers to its wandb run."""

    def __init__(self, run: Any):
        self.run = run

    # Rows at their optimizer step: a resumed run continues the step counter (the epoch's
    # row joins the row of its last step).
    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({"global_step": step, **metrics}, step=step)

    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.run.log({"epoch": epoch, "global_step": step, **epoch_metrics(metrics)}, step=step)

    def log_answers(self, rows: list[dict]) -> None:
        """One table of the best epoch's answers (`eval/answers`), one row per question, so
        runs can be joined on `id` in the dashboard."""
        import wandb

        self.run.log({ANSWERS_TABLE: wandb.Table(*answers_table(rows))})

    def finish(self, status: str, summary: dict) -> None:
        try:
            self.run.summary.update(summary_metrics(summary))
        finally:
            self.run.finish(exit_code=EXIT_CODES.get(status, 1))


ANSWERS_TABLE = "eval/answers"
ANSWER_COLUMNS = ("id", "epoch", "question", "context", "gold", "prediction", "exact", "f1")


def answers_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(columns, data) of the answers table: answers.jsonl's fields (span_logit when the rows
    have it), gold answers joined with " | ", one column per slice family."""
    families = list(rows[0]["slices"]) if rows else []
    fields = [*ANSWER_COLUMNS, *(["span_logit"] if rows and "span_logit" in rows[0] else [])]
    data = [
        [
            *(" | ".join(r["gold"]) if c == "gold" else r[c] for c in fields),
            *(r["slices"][f] for f in families),
        ]
        for r in rows
    ]
    return [*fields, *families], data


def stored_run_id(run_dir: Path, resume_step: int | None) -> str | None:
    """The wandb run id this job continues: the one stored in its run directory when the job
    resumes its own state (`resume_step` is not None), else None (a new run)."""
    path = Path(run_dir) / "wandb" / RUN_ID_FILE
    if resume_step is None or not path.is_file():
        return None
    return path.read_text().strip() or None


def start_wandb(
    cfg: LoggerConfig,
    run_dir: Path,
    config: dict,
    labels: RunLabels,
    resume_step: int | None = None,
) -> WandbTracker | None:
    """Start the job's wandb run (None with logger.mode=disabled), or continue it when the job
    resumes its own state from optimizer step `resume_step`."""
    mode = resolve_mode(cfg.mode)
    if mode == "disabled":
        return None
    import wandb

    run_id = stored_run_id(run_dir, resume_step)
    try:
        run = wandb.init(
            id=run_id,
            resume="allow" if run_id else None,
            project=cfg.project,
            entity=cfg.entity,
            group=labels.group,
            name=labels.name,
            job_type="train",
            tags=list(cfg.tags),
            config=config,
            mode=mode,
            dir=str(Path(run_dir).resolve()),
            # offline: qaexp's one log line below replaces wandb's banner
            settings=wandb.Settings(silent=mode == "offline", quiet=True),
        )
    except wandb.errors.Error as err:
        raise QAExpError(
            f"wandb could not start a run in mode {mode} ({err}). Check the network and "
            "logger.project / logger.entity, or use logger.mode=offline."
        ) from err
    define_metrics(run)
    write_text_atomic(Path(run_dir) / "wandb" / RUN_ID_FILE, run.id)
    if run_id:
        log.info("W&B run %s continues from optimizer step %d", run.id, resume_step)
    if mode == "offline":
        sync_dir = run.settings.sync_dir
        log.info("W&B run logged offline in %s; upload it with: wandb sync %s", sync_dir, sync_dir)
    return WandbTracker(run)
