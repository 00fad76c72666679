"""The search space, written in Hydra's override syntax, as Optuna distributions.

`hydra.sweeper.params` holds the space (`optimizer.lr: tag(log, interval(1e-5, 2e-4))`); the
command line changes it: a sweep (`stride=64,96,128`, `choice(...)`, `range(...)`,
`interval(...)`) replaces or adds a dimension, a plain value (`trainer.epochs=2`) fixes the
key and takes it out of the space.

    choice(a, b, c) or a,b,c      categorical
    range(start, stop[, step])    integers (floats with a float step) start, start+step, ...
                                  below stop, as Python's range and Hydra's basic sweeper
    interval(low, high)           floats in [low, high]
    tag(log, interval/range(...)) the same on a log scale
"""

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from qaexp.errors import QAExpError

PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_./:@-]+$")


@dataclass
class SearchSpace:
    """What each trial samples, and the overrides every trial gets unchanged."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # name -> key as typed (`+key`)
    fixed: list[str] = field(default_factory=list)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """One trial's command line: the fixed overrides, then its sampled values."""
        return [*self.fixed, *(f"{self.keys[k]}={override_value(v)}" for k, v in params.items())]


def override_value(value: Any) -> str:
    """`value` in override syntax: numbers and plain words as they are, other text quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float) or PLAIN_VALUE.match(str(value)):
        return str(value)
    escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def range_distribution(override: Override, log: bool) -> BaseDistribution:
    """range(start, stop, step): the values Hydra's basic sweeper would run, as one
    evenly stepped distribution (integers when start and step are integers)."""
    values = [v for v in override.sweep_iterator()]
    if not values:
        raise QAExpError(
            f"{override.input_line}: the search range is empty (Hydra's range(start, stop, "
            "step) counts from start and stops before stop)."
        )
    low, high, step = min(values), max(values), abs(override.value().step)
    if all(isinstance(v, int) for v in values) and isinstance(step, int):
        return IntDistribution(low, high, log=log, step=1 if log else step)
    return FloatDistribution(low, high, log=log, step=None if log else step)


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override."""
    name, sweep = override.key_or_group, override.value()
    log = "log" in getattr(sweep, "tags", ())
    if isinstance(sweep, ChoiceSweep):
        if log:
            raise QAExpError(f"{name}: tag(log, ...) applies to interval() and range() only.")
        return CategoricalDistribution(sweep.list)
    if isinstance(sweep, RangeSweep):
        return range_distribution(override, log)
    if isinstance(sweep, IntervalSweep):
        return FloatDistribution(sweep.start, sweep.end, log=log)
    raise QAExpError(
        f"{override.input_line}: an Optuna search takes choice(), range() or interval() "
        "(or a,b,c) for a searched key."
    )


def search_space(params: dict[str, str] | None, arguments: list[str]) -> SearchSpace:
    """The space of `hydra.sweeper.params`, changed by the command line's `arguments`."""
    parser = OverridesParser.create()
    space = SearchSpace()
    configured = [f"{key}={value}" for key, value in (params or {}).items()]
    for override in parser.parse_overrides(configured):
        space.distributions[override.key_or_group] = distribution(override)
        space.keys[override.key_or_group] = override.get_key_element()
    for override in parser.parse_overrides(arguments):
        name = override.key_or_group
        if override.is_sweep_override():
            space.distributions[name] = distribution(override)
            space.keys[name] = override.get_key_element()
        else:
            space.distributions.pop(name, None)
            space.fixed.append(override.input_line)
    return space
