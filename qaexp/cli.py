"""The command line, checked before Hydra runs any job.

Hydra reports a bad command line with its own wording and exit code 1; here it is one
paragraph and exit 2, like qaexp's own errors: a typo'd key gets a "did you mean" from the
schema's keys, and any other composition error (an unknown group option, a wrongly typed
value) is Hydra's message as a paragraph. For a --multirun, the first job's inputs (settings,
model, data) are checked once before any job starts, so a bad input that every job shares
fails like a single run instead of once per job.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_origin, get_type_hints

from qaexp.config import QAExpConfig, as_dict
from qaexp.errors import QAExpError

# Flags after which Hydra runs no job (help, config printing, tab completion).
NO_RUN_FLAGS = {"-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info"}
NO_RUN_FLAGS |= {"-sc", "--shell-completion", "-cp", "--config-path", "-cd", "--config-dir"}
# Hydra's modes, of which one command takes one (it raises a ValueError on two).
MODE_FLAGS = {"-r": "--run", "-m": "--multirun", "-c": "--cfg", "-i": "--info"}
MODE_FLAGS |= {"-sc": "--shell-completion"}
MAX_CHECKED_JOBS = 64  # a sweep's settings are checked job by job up to this many


def schema_keys(node: Any = QAExpConfig, prefix: str = "") -> tuple[set[str], set[str]]:
    """Every dotted key of the schema, and the keys of free-form dicts (model.architecture),
    below which any key is valid."""
    keys, open_dicts = set(), set()
    hints = get_type_hints(node)
    for item in fields(node):
        name = f"{prefix}{item.name}"
        keys.add(name)
        kind = hints[item.name]
        if is_dataclass(kind):
            sub_keys, sub_open = schema_keys(kind, f"{name}.")
            keys |= sub_keys
            open_dicts |= sub_open
        elif get_origin(kind) is dict:
            open_dicts.add(name)
    return keys, open_dicts


def check_key(override: str, keys: set[str], open_dicts: set[str], groups: set[str]) -> None:
    """Raise a QAExpError with a suggestion when `override` sets a key the schema lacks."""
    key = override.split("=", 1)[0]
    if key.startswith(("+", "~", "hydra")) or "/" in key or "@" in key or "=" not in override:
        return  # additions, deletions, Hydra's own keys and group paths: Hydra checks them
    if key in keys or key in groups or any(key.startswith(f"{d}.") for d in open_dicts):
        return
    # Candidates at the same depth: trainer.epoch -> trainer.epochs, not trainer.
    same_depth = sorted(k for k in keys | groups if k.count(".") == key.count("."))
    close = difflib.get_close_matches(key, same_depth, n=2, cutoff=0.8)
    hint = f"Did you mean {' or '.join(close)}? " if close else ""
    raise QAExpError(
        f"{override}: qaexp has no setting {key}. {hint}`python -m qaexp --help` lists the "
        "groups and main keys; `python -m qaexp --cfg job` prints every key."
    )


def config_groups(conf_dir: str) -> set[str]:
    return {p.name for p in Path(conf_dir).iterdir() if p.is_dir() and not p.name.startswith("_")}


def job_override_sets(overrides: list[str]) -> list[list[str]]:
    """The override lists of a sweep's jobs (discrete sweeps expanded, up to
    MAX_CHECKED_JOBS; other sweeps, such as Optuna's intervals, keep their defaults)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for parsed in OverridesParser.create().parse_overrides(overrides):
        key = parsed.get_key_element()
        if not parsed.is_sweep_override():
            choices.append([parsed.input_line])
        elif parsed.is_discrete_sweep():
            choices.append([f"{key}={value}" for value in parsed.sweep_string_iterator()])
    return [list(job) for job in itertools.islice(itertools.product(*choices), MAX_CHECKED_JOBS)]


def compose_job(conf_dir: str, overrides: list[str]) -> QAExpConfig:
    """The typed config of one job, as Hydra composes it; Hydra's errors as a QAExpError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            return OmegaConf.to_object(compose(config_name="config", overrides=overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise QAExpError(
            f"The command line does not make a valid qaexp config: {error_text(err)} "
            "(`python -m qaexp --help` lists the groups and main keys.)"
        ) from None


# Lines of Hydra's and OmegaConf's messages that describe their internals, not the mistake.
INTERNAL_LINES = ("Config search path", "provider=", "full_key", "object_type", "reference_type")


def error_text(err: BaseException) -> str:
    """A composition error and its cause as one line, without Hydra's internal details."""
    text = f"{err}\n{err.__cause__ or ''}"
    lines = (line.strip() for line in text.splitlines())
    return " ".join(line for line in lines if line and not line.startswith(INTERNAL_LINES))


# Overrides that make a run a sweep without --multirun (their configs set hydra.mode=MULTIRUN).
SWEEP_OVERRIDES = ("hparams_search=", "hydra.mode=MULTIRUN")


def check_command_line(argv: list[str], conf_dir: str) -> None:
    """Check the overrides of `argv` (nothing when Hydra will run no job: --help, --cfg,
    ...); for a --multirun, also the inputs its jobs share (`preflight_sweep`)."""
    from hydra._internal.utils import get_args_parser

    flags = {arg.split("=", 1)[0] for arg in argv}
    modes = sorted({MODE_FLAGS.get(flag, flag) for flag in flags} & set(MODE_FLAGS.values()))
    if len(modes) > 1:
        raise QAExpError(
            f"{' and '.join(modes)} cannot be given together: Hydra runs one of them per "
            "command. To see a sweep job's config, give its overrides without --multirun "
            "(`python -m qaexp stride=64 --cfg job`)."
        )
    if NO_RUN_FLAGS & {arg.split("=", 1)[0] for arg in argv}:
        return
    args = get_args_parser().parse_args(argv)
    keys, open_dicts = schema_keys()
    groups = config_groups(conf_dir)
    for override in args.overrides:
        check_key(override, keys, open_dicts, groups)
    sweep = args.multirun or any(o.startswith(SWEEP_OVERRIDES) for o in args.overrides)
    jobs = job_override_sets(args.overrides) if sweep else [args.overrides]
    configs = [compose_job(conf_dir, job) for job in jobs]
    if sweep:
        preflight_sweep(configs)


def preflight_sweep(jobs: list[QAExpConfig]) -> None:
    """Before a sweep starts: raise the first job's QAExpError when every job would fail on
    its settings, or on the model and data they load (checked once per distinct pair). A
    failure of only some jobs is theirs: they report it when they run."""
    from qaexp.training.setup import check_run_settings, load_inputs

    def failure(check, cfg) -> QAExpError | None:
        try:
            check(cfg)
        except QAExpError as err:
            return err
        return None

    errors = [failure(check_run_settings, cfg) for cfg in jobs]
    if all(errors):
        raise errors[0]
    sources = {}
    for cfg in (cfg for cfg, err in zip(jobs, errors, strict=True) if err is None):
        sources.setdefault(repr((as_dict(cfg)["model"], as_dict(cfg)["data"])), cfg)
    errors = [failure(load_inputs, cfg) for cfg in sources.values()]
    if all(errors):
        raise errors[0]
