"""The sweep file of ``pinsage sweep`` (the one ``wandb sweep`` takes): its parameters
(:class:`Param`: ``value``, ``values``, ``min``/``max`` and the named distributions), the whole
file (:class:`Sweep`, :func:`load_sweep`, every refusal naming the key and what is valid), and how
a trial's values become the fit command (:func:`trial_args`, :func:`expand_command`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform",
                 "log_uniform_values", "q_log_uniform_values")
MACROS = ("${env}", "${interpreter}", "${program}", "${args}")
DONE_STATES = ("COMPLETE", "PRUNED", "FAIL")


class SweepError(ValueError):
    """Bad sweep file or arguments: reaches the user as one line."""


# ----------------------------------------------------------------------------------------------
# the sweep file
# ----------------------------------------------------------------------------------------------
@dataclass
class Param:
    name: str
    kind: str  # one of DISTRIBUTIONS
    values: List[Any] = field(default_factory=list)
    low: float = 0.0
    high: float = 0.0
    q: Optional[float] = None

    @property
    def encoded(self) -> bool:  # optuna categoricals hold only None/bool/int/float/str
        return any(not (v is None or isinstance(v, (bool, int, float, str))) for v in self.values)

    def choices(self) -> List[Any]:
        return [json.dumps(v) for v in self.values] if self.encoded else list(self.values)

    def decode(self, v: Any) -> Any:
        if self.kind == "log_uniform":
            return math.exp(v)
        if self.kind == "q_log_uniform_values":
            return round(v / self.q) * self.q
        if self.kind == "categorical" and self.encoded:
            return json.loads(v)
        return v

    def suggest(self, trial) -> Any:
        if self.kind == "constant":
            return self.values[0]
        if self.kind == "categorical":
            return self.decode(trial.suggest_categorical(self.name, self.choices()))
        if self.kind == "int_uniform":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        if self.kind == "uniform":
            return trial.suggest_float(self.name, self.low, self.high)
        if self.kind == "q_uniform":
            return trial.suggest_float(self.name, self.low, self.high, step=self.q)
        if self.kind == "log_uniform":  # wandb: min/max are natural-log exponents
            return self.decode(trial.suggest_float(self.name, self.low, self.high))
        return self.decode(trial.suggest_float(self.name, self.low, self.high, log=True))

    def grid(self) -> List[Any]:
        if self.kind == "categorical":
            return self.choices()
        if self.kind == "int_uniform":
            return list(range(int(self.low), int(self.high) + 1))
        raise SweepError(f"parameter {self.name!r}: method grid needs `values` (or int_uniform), "
                         f"not distribution {self.kind!r}")

    @property
    def log_scale(self) -> bool:
        return self.kind in ("log_uniform", "log_uniform_values", "q_log_uniform_values")


def _param(name: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        raise SweepError(f"parameter {name!r}: expected a mapping (values / value / distribution, min, max), got {spec!r}")
    if "parameters" in spec:
        raise SweepError(f"parameter {name!r}: nested parameters are not supported; use dotted keys (model.lr)")
    if "probabilities" in spec:
        raise SweepError(f"parameter {name!r}: `probabilities` is not supported by pinsage sweep")
    dist = spec.get("distribution")
    if dist is None:
        if "value" in spec:
            dist = "constant"
        elif "values" in spec:
            dist = "categorical"
        elif "min" in spec and "max" in spec:
            both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
            dist = "int_uniform" if both_int else "uniform"
        else:
            raise SweepError(f"parameter {name!r}: give `values`, `value` or `min` and `max`")
    if dist not in DISTRIBUTIONS:
        raise SweepError(f"parameter {name!r}: distribution {dist!r} is not supported; choose one of {list(DISTRIBUTIONS)}")
    if dist == "constant":
        if "value" not in spec:
            raise SweepError(f"parameter {name!r}: distribution constant needs `value`")
        return Param(name, "constant", [spec["value"]])
    if dist == "categorical":
        vals = spec.get("values")
        if not isinstance(vals, list) or not vals:
            raise SweepError(f"parameter {name!r}: `values` must be a non-empty list, got {vals!r}")
        return Param(name, "categorical", list(vals))
    try:
        low, high = float(spec["min"]), float(spec["max"])
    except (KeyError, TypeError, ValueError):
        raise SweepError(f"parameter {name!r}: distribution {dist} needs numeric `min` and `max`, got {spec!r}") from None
    if not low < high:
        raise SweepError(f"parameter {name!r}: min {spec['min']} must be < max {spec['max']}")
    if dist in ("log_uniform_values", "q_log_uniform_values") and low <= 0:
        raise SweepError(f"parameter {name!r}: {dist} needs min > 0, got {spec['min']}")
    q = None
    if dist in ("q_uniform", "q_log_uniform_values"):
        q = float(spec.get("q", 1.0))
        if not q > 0:
            raise SweepError(f"parameter {name!r}: q must be > 0, got {spec.get('q')!r}")
    return Param(name, dist, [], low, high, q)


@dataclass
class Sweep:
    path: Path
    name: str
    method: str
    metric: str
    goal: str
    params: List[Param]
    command: List[str]
    program: str
    run_cap: Optional[int]
    early_terminate: Optional[dict]
    raw: dict

    @property
    def swept(self) -> List[Param]:
        return [p for p in self.params if p.kind != "constant"]

    def grid_size(self) -> int:
        n = 1
        for p in self.swept:
            n *= len(p.grid())
        return n

    def fingerprint(self) -> str:
        keep = {k: self.raw.get(k) for k in ("method", "metric", "parameters", "command", "early_terminate")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_sweep(path: str) -> Sweep:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SweepError(f"sweep file {path!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"sweep file {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SweepError(f"sweep file {path}: expected a mapping with method, metric, parameters, command")
    method = raw.get("method")
    if method not in METHODS:
        raise SweepError(f"sweep file {path}: method={method!r} is not valid; choose one of {list(METHODS)}")
    metric = raw.get("metric") or {}
    if not isinstance(metric, dict) or not metric.get("name"):
        raise SweepError(f"sweep file {path}: needs `metric: {{name: val/pinsage/item/mrr, goal: maximize}}`")
    goal = metric.get("goal", "minimize")  # wandb's default
    if goal not in GOALS:
        raise SweepError(f"sweep file {path}: metric.goal={goal!r} is not valid; choose one of {list(GOALS)}")
    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepError(f"sweep file {path}: `parameters` must be a non-empty mapping")
    program = str(raw.get("program", "pinsage"))
    command = raw.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]
    if not isinstance(command, list) or "${args}" not in command:
        raise SweepError(f"sweep file {path}: `command` must be a list holding ${{args}}, got {command!r}")
    for tok in command:
        if isinstance(tok, str) and tok.startswith("${") and tok not in MACROS:
            raise SweepError(f"sweep file {path}: command macro {tok} is not supported; use {list(MACROS)}")
    names = [program if t == "${program}" else str(t) for t in command]
    if "pinsage" not in names or "fit" not in names:
        raise SweepError(f"sweep file {path}: the command must run `pinsage fit`, got {command!r}")
    cap = raw.get("run_cap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise SweepError(f"sweep file {path}: run_cap must be an integer >= 1, got {cap!r}")
    et = raw.get("early_terminate")
    if et is not None and (not isinstance(et, dict) or et.get("type") != "hyperband"):
        raise SweepError(f"sweep file {path}: early_terminate supports only type: hyperband, got {et!r}")
    sweep = Sweep(p, str(raw.get("name") or p.stem), method, str(metric["name"]), goal,
                  [_param(str(k), v) for k, v in params.items()], [str(t) for t in command], program, cap, et, raw)
    if method == "grid":
        sweep.grid_size()  # every parameter is discrete
    if not sweep.swept:
        raise SweepError(f"sweep file {path}: no parameter varies (all are `value:` constants)")
    return sweep


def format_value(v: Any) -> str:
    """A value as the CLI override text (``--key=<this>``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def trial_args(params: Dict[str, Any]) -> List[str]:
    return [f"--{k}={format_value(v)}" for k, v in params.items()]


def expand_command(sweep: Sweep, fit_args: List[str]) -> List[str]:
    """The sweep's command with ``pinsage`` as this interpreter's CLI and ``${args}`` = fit_args.

    ``fit_args`` come where ``${args}`` stands; ``${env}`` is dropped (the child inherits the
    environment); the result is the argv *after* the ``pinsage`` program name."""
    out: List[str] = []
    seen_program = False
    for tok in sweep.command:
        tok = sweep.program if tok == "${program}" else tok
        if tok == "${env}":
            continue
        if tok == "${interpreter}":
            continue
        if tok == "${args}":
            out.extend(fit_args)
        elif tok == "pinsage" and not seen_program:
            seen_program = True
        elif seen_program:
            out.append(tok)
    return out
