"""Hydra entry point: `python -m qaexp [group=option ...] [key=value ...]`."""

from __future__ import annotations

import errno
import importlib
import inspect
import json
import logging
import pkgutil
import shutil
import sys
import traceback
from importlib.resources import files
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.plugins.plugin import Plugin
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from qaexp.analysis.compare import SWEEP_FAILURES
from qaexp.cli import check_command_line
from qaexp.config import QAExpConfig, register_configs
from qaexp.console import quiet_libraries
from qaexp.errors import QAExpError, RunInterrupted
from qaexp.tracking import RunLabels
from qaexp.tracking.lock import RunFolderBusy
from qaexp.tracking.rundir import SUMMARY_FILE, remove_temporary_files, write_json_atomic

log = logging.getLogger("qaexp")


def run_stamp() -> str:
    """`${qaexp.run_stamp:}`: the DATE/TIME of run and sweep folders, agreed by every rank."""
    from qaexp.launch import agreed_run_stamp  # imports torch: only when a run dir is made

    return agreed_run_stamp()


def register_resolvers() -> None:
    register_configs()
    if not OmegaConf.has_resolver("qaexp.run_stamp"):
        # Cached in the config: every job, task and requeue of one launch reuses the value.
        OmegaConf.register_new_resolver("qaexp.run_stamp", run_stamp, use_cache=True)


register_resolvers()


# qaexp's Hydra plugins: the parallel and SLURM launchers, the Optuna sweeper.
PLUGIN_PACKAGES = ("hydra_plugins.qaexp_launcher", "hydra_plugins.qaexp_sweeper")


def register_plugins() -> None:
    """Make qaexp's Hydra plugins known however qaexp was installed.

    Hydra finds plugins by listing the `hydra_plugins` namespace with pkgutil. Under
    `pip install -e .` setuptools serves qaexp's folders through an import hook that pkgutil
    cannot list, so from any folder but the clone's root Hydra would not see qaexp's launchers
    and sweeper ("Could not load 'hydra/launcher/qaexp_parallel'"). Importing the plugin
    modules stores their configs in Hydra's ConfigStore; registering their classes (Hydra's
    public `Plugins.register`) lets Hydra build them. Where the scan found them already
    (a regular install, or run from the clone), this changes nothing."""
    plugins = Plugins.instance()
    for package_name in PLUGIN_PACKAGES:
        if any(name.startswith(package_name + ".") for name in plugins.class_name_to_class):
            continue
        package = importlib.import_module(package_name)
        for module_info in pkgutil.iter_modules(package.__path__, prefix=package_name + "."):
            module = importlib.import_module(module_info.name)
            for _, member in inspect.getmembers(module, inspect.isclass):
                if (
                    member.__module__ == module.__name__
                    and issubclass(member, Plugin)
                    and not inspect.isabstract(member)
                ):
                    plugins.register(member)


def config_dir() -> str:
    """The conf/ folder: the source checkout's own when run from one, else the packaged copy."""
    source = Path(__file__).resolve().parent.parent / "conf"
    return str(source) if (source / "config.yaml").is_file() else str(files("qaexp.conf"))


def dir_label(path: str, cwd: str) -> str:
    """A run or sweep folder as a dashboard label: `outputs/multirun/2025-01-31/12-00-00` ->
    `multirun_2025-01-31_12-00-00` (relative to the launch folder; at most 3 levels)."""
    folder = Path(path)
    if folder.is_absolute() and folder.is_relative_to(cwd):
        folder = folder.relative_to(cwd)
    parts = [p for p in folder.parts if p not in (folder.anchor, "outputs")]
    return "_".join(parts[-3:]) or "qaexp"


def run_labels(hydra_cfg: DictConfig) -> RunLabels:
    """Dashboard labels of this job: every job of a --multirun shares one group (the sweep
    folder), a single run gets its own (its run folder); the name is the job's overrides."""
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    folder = hydra_cfg.sweep.dir if multirun else hydra_cfg.run.dir
    name = hydra_cfg.job.override_dirname or "defaults"
    return RunLabels(group=dir_label(folder, hydra_cfg.runtime.cwd), name=name)


def run(cfg: DictConfig) -> float:
    """Run one job and return its best F1 (what a Hydra sweeper optimises)."""
    from qaexp.launch import run_job
    from qaexp.modeling import serve_exports_with
    from qaexp.serving.backend import export_model

    serve_exports_with(export_model)  # trainer.epochs=0 on an ONNX export's folder
    settings: QAExpConfig = OmegaConf.to_object(cfg)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    summary = run_job(settings, run_dir, run_labels(hydra_cfg))
    log.info(
        "best epoch %s: EM %.2f F1 %.2f; results in %s",
        summary["best_epoch"],
        summary["best_exact_match"] or 0.0,
        summary["best_f1"] or 0.0,
        shown_path(run_dir),
    )
    return summary["best_f1"] or 0.0


def shown_path(path: Path) -> str:
    """`path` relative to the working folder when it lies below it (shorter on the console)."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def discard_unfinished_run_dir(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but Hydra's own files (the job failed before
    writing any result), so bad input leaves no half-made run behind."""
    hydra_owned = {".hydra", "qaexp.log"}
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= hydra_owned:
        shutil.rmtree(run_dir)
        # The DATE folder (and outputs/runs, outputs) too when that run was all they held.
        for parent in run_dir.resolve().parents:
            if (
                parent == Path.cwd()
                or not parent.is_relative_to(Path.cwd())
                or any(parent.iterdir())
            ):
                break
            parent.rmdir()


def report_interrupted(err: RunInterrupted) -> None:
    """Say what happens next for a run stopped by a signal with its state saved: a SLURM job
    stopped by SIGUSR2 is requeued and resumes by itself; anything else gets the command that
    continues it (for a sweep job: the sweep command again, in the same sweep folder)."""
    from qaexp.launch import requeue_after_stop

    log.warning("%s", err)
    if requeue_after_stop(err.exit_code - 128):
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        log.warning(
            "A job that SLURM requeued resumes by itself; otherwise resume the sweep by "
            "running its command again with hydra.sweep.dir=%s trainer.resume=true "
            "(finished jobs keep their results).",
            Path(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir),
        )
        return
    overrides = " ".join(o for o in hydra_cfg.overrides.task if not o.startswith("trainer.resume"))
    log.warning(
        "Resume with: python -m qaexp %s hydra.run.dir=%s trainer.resume=true",
        overrides,
        hydra_cfg.runtime.output_dir,
    )


def describe_failure(err: BaseException) -> str:
    """One line naming what failed: for an OS error (a full disk, a permission) its errno and
    the path, from the error or from the one it was raised from; else the error and where."""
    chain, seen = [], err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for failure in chain:
        if isinstance(failure, OSError) and (failure.errno or failure.filename):
            name = (
                f" ({errno.errorcode.get(failure.errno, failure.errno)})" if failure.errno else ""
            )
            where = f" at {failure.filename}" if failure.filename else ""
            return f"{failure.strerror or failure}{name}{where}"
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    place = f" (in {Path(frame.filename).name}:{frame.lineno}, {frame.name})" if frame else ""
    kind = "missing key " if isinstance(err, KeyError) else ""
    return f"{type(err).__name__}: {kind}{err}{place}"


def log_traceback_to_file(err: BaseException, run_dir: Path) -> None:
    """The full traceback into the run's qaexp.log only (stderr gets one paragraph). A rank
    other than 0 of an external launch logs to its console only: it appends its traceback to
    the run's qaexp.log itself, under its rank."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    text = "".join(traceback.format_exception(err))
    for handler in files:
        handler.emit(logging.LogRecord("qaexp", logging.ERROR, "", 0, text, None, None))
    if not files and (run_dir / "qaexp.log").is_file():
        from qaexp.launch import external_rank

        with open(run_dir / "qaexp.log", "a", encoding="utf-8") as log_file:
            log_file.write(f"[rank {external_rank()}] {text}")


def resume_hint(run_dir: Path) -> str:
    """What continues a failed run from its saved state: this run's command with its folder
    (a new launch, e.g. under srun, would otherwise start a new run), or the sweep's."""
    if not HydraConfig.initialized():
        return f"add hydra.run.dir={run_dir} trainer.resume=true to its command"
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sweep_dir = Path(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir)
        return f"run the sweep's command again with hydra.sweep.dir={sweep_dir} trainer.resume=true"
    kept = [o for o in hydra_cfg.overrides.task if not o.startswith(("trainer.resume", "hydra."))]
    return f"python -m qaexp {' '.join([*kept, f'hydra.run.dir={run_dir}'])} trainer.resume=true"


def mark_failed(run_dir: Path, message: str) -> None:
    """Keep a run dir that holds results (or the traceback) and mark it failed; never let a
    second error (the disk is still full) hide the first."""
    remove_temporary_files(run_dir)
    summary = run_dir / SUMMARY_FILE
    try:
        saved = json.loads(summary.read_text()) if summary.is_file() else {}
        if saved.get("status") != "failed" or "error" not in saved:
            write_json_atomic(summary, {**saved, "status": "failed", "error": message})
    except (OSError, ValueError) as err:
        log.error("Could not mark %s failed: %s", summary, describe_failure(err))


def report_unexpected(err: Exception, run_dir: Path) -> None:
    """The error boundary: one paragraph on stderr, the traceback in qaexp.log, the run dir
    marked failed."""
    what = describe_failure(err)
    log_traceback_to_file(err, run_dir)
    message = (
        f"The run failed: {what}. The full traceback is in {run_dir / 'qaexp.log'}; the run "
        "directory is marked failed in summary.json (a run with a saved state continues, once "
        f"the cause is fixed, with: {resume_hint(run_dir)})."
    )
    print(f"[qaexp][ERROR] - {message}", file=sys.stderr)
    if run_dir.is_dir():
        mark_failed(run_dir, message)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except RunInterrupted as err:
        report_interrupted(err)
        sys.exit(err.exit_code)
    except RunFolderBusy as err:
        # Another live process writes this folder: every file in it stays as that one has it.
        log.error("%s", err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            BUSY_JOBS.append(HydraConfig.get().runtime.output_dir)
            return float("nan")
        sys.exit(2)
    except QAExpError as err:
        log.error("%s", err)
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # A sweep keeps the failed job's folder, marked failed, for the comparison; the
            # other jobs run, the sweep's end names the failed ones and main() exits 2. An
            # Optuna sweep counts the NaN as a failed trial.
            mark_failed(run_dir, str(err))
            return float("nan")  # no traceback; the sweep goes on and names it at its end
        discard_unfinished_run_dir(run_dir)
        if run_dir.is_dir():
            remove_temporary_files(run_dir)
        sys.exit(2)
    except Exception as err:
        hydra_cfg = HydraConfig.get()
        report_unexpected(err, Path(hydra_cfg.runtime.output_dir))
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return float("nan")  # the paragraph is logged; the sweep names the job at its end
        sys.exit(1)


# Sweep jobs of this process refused because another process writes their folder.
BUSY_JOBS: list[str] = []


def main() -> None:
    """Console entry. Under an external launch (torchrun, srun) every rank runs Hydra; ranks
    other than 0 write no Hydra files or logs into the shared run directory."""
    import hydra_plugins.qaexp_launcher.slurm as slurm_launcher
    from hydra_plugins.qaexp_launcher.slurm import OTHER_RANK_OVERRIDES
    from qaexp.launch import external_rank, external_world_size

    if external_world_size() > 1 and external_rank() != 0:
        sys.argv += OTHER_RANK_OVERRIDES
    quiet_libraries()
    register_plugins()
    try:
        check_command_line(sys.argv[1:], config_dir())
    except QAExpError as err:
        print(err, file=sys.stderr)  # before Hydra: no logging configured yet
        sys.exit(2)
    SWEEP_FAILURES.clear()
    BUSY_JOBS.clear()
    slurm_launcher.UNFINISHED_JOBS.clear()
    hydra_main()
    # The module's attribute, read now: Hydra's plugin scan runs the module again.
    if SWEEP_FAILURES or BUSY_JOBS or slurm_launcher.UNFINISHED_JOBS:
        sys.exit(2)  # the sweep's end named the failed (busy, or on SLURM unfinished) jobs


if __name__ == "__main__":
    main()
