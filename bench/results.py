"""The results of a bench run as frozen values, and their JSON form on disk.

A run holds one `ScenarioResult` per scenario; a scenario holds one `Row` per target (and variant, such
as "stall" or "idle"). Rows keep flat named metrics (`rps`, `success_rate`, `added_p99_ms`...) so that
tables, charts and goals pick what they need by name, and the JSON stays readable by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final, TypeAlias

SCHEMA_VERSION: Final = 1
RESULTS_FILE: Final = "results.json"

JsonScalar: TypeAlias = str | int | float | bool | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyStats:
    """A latency distribution reduced to what reports need: nearest-rank percentiles and a curve."""

    count: int
    mean_ms: float
    max_ms: float
    percentiles_ms: dict[str, float]
    curve: tuple[tuple[float, float], ...] = ()

    def at(self, p: str) -> float | None:
        return self.percentiles_ms.get(p)


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One target (in one variant) within a scenario."""

    target: str
    variant: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    latency: LatencyStats | None = None
    shares: dict[str, float] = field(default_factory=dict)
    runs: tuple[dict[str, float], ...] = ()
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.target} ({self.variant})" if self.variant else self.target

    def metric(self, name: str) -> float | None:
        """A flat metric, or a latency percentile when asked for `p<key>_ms` (e.g. `p99.9_ms`)."""
        if name in self.metrics:
            return self.metrics[name]
        if self.latency is not None and name.startswith("p") and name.endswith("_ms"):
            return self.latency.at(name[1:-3])
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Skip:
    """A target that did not run, and what would make it run."""

    target: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResult:
    name: str
    options: dict[str, JsonScalar] = field(default_factory=dict)
    rows: tuple[Row, ...] = ()
    skipped: tuple[Skip, ...] = ()
    commands: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    charts: tuple[str, ...] = ()

    def row(self, target: str, variant: str = "") -> Row | None:
        for row in self.rows:
            if row.target == target and row.variant == variant:
                return row
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    cores: int
    cpu_model: str
    kernel: str
    python: str
    memory_gb: float
    tools: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchRun:
    """Everything one `meshd-bench` invocation measured, with enough context to reproduce it."""

    started_at: str
    finished_at: str
    invocation: str
    machine: Machine
    scenarios: tuple[ScenarioResult, ...] = ()
    schema: int = SCHEMA_VERSION

    def scenario(self, name: str) -> ScenarioResult | None:
        for scenario in self.scenarios:
            if scenario.name == name:
                return scenario
        return None


def to_json(run: BenchRun) -> str:
    return json.dumps(asdict(run), indent=1, sort_keys=False) + "\n"


def from_json(text: str) -> BenchRun:
    """Parse what `to_json` wrote; a missing or mistyped field is a `ValueError` naming it."""
    data = json.loads(text)
    return _bench_run(_obj(data, "run"))


def save(run: BenchRun, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS_FILE
    path.write_text(to_json(run))
    return path


def load(directory: Path) -> BenchRun:
    return from_json((directory / RESULTS_FILE).read_text())


def result_dirs(root: Path) -> list[Path]:
    """Result folders under `root`, oldest first (their names are sortable timestamps)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / RESULTS_FILE).is_file())


# -- parsing helpers: JSON in, typed values out ------------------------------------------------------


def _obj(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object")
    return value


def _get(data: Mapping[str, object], key: str, where: str) -> object:
    if key not in data:
        raise ValueError(f"{where}.{key}: missing")
    return data[key]


def _str(data: Mapping[str, object], key: str, where: str, default: str | None = None) -> str:
    if default is not None and key not in data:
        return default
    value = _get(data, key, where)
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: expected a string")
    return value


def _num(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: expected a number")
    return float(value)


def _int(data: Mapping[str, object], key: str, where: str) -> int:
    value = _get(data, key, where)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}.{key}: expected an integer")
    return value


def _floats(value: object, where: str) -> dict[str, float]:
    return {k: _num(v, f"{where}.{k}") for k, v in _obj(value, where).items()}


def _list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list")
    return value


def _strs(value: object, where: str) -> tuple[str, ...]:
    items = _list(value, where)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{where}: expected a list of strings")
    return tuple(str(item) for item in items)


def _scalars(value: object, where: str) -> dict[str, JsonScalar]:
    out: dict[str, JsonScalar] = {}
    for key, item in _obj(value, where).items():
        if item is not None and not isinstance(item, str | int | float | bool):
            raise ValueError(f"{where}.{key}: expected a scalar")
        out[key] = item
    return out


def _latency(value: object, where: str) -> LatencyStats:
    data = _obj(value, where)
    curve = tuple(
        (_num(_list(pt, where)[0], where), _num(_list(pt, where)[1], where))
        for pt in _list(data.get("curve", []), f"{where}.curve")
    )
    return LatencyStats(
        count=_int(data, "count", where),
        mean_ms=_num(_get(data, "mean_ms", where), f"{where}.mean_ms"),
        max_ms=_num(_get(data, "max_ms", where), f"{where}.max_ms"),
        percentiles_ms=_floats(_get(data, "percentiles_ms", where), f"{where}.percentiles_ms"),
        curve=curve,
    )


def _row(value: object, where: str) -> Row:
    data = _obj(value, where)
    latency = data.get("latency")
    return Row(
        target=_str(data, "target", where),
        variant=_str(data, "variant", where, default=""),
        metrics=_floats(data.get("metrics", {}), f"{where}.metrics"),
        latency=None if latency is None else _latency(latency, f"{where}.latency"),
        shares=_floats(data.get("shares", {}), f"{where}.shares"),
        runs=tuple(_floats(r, f"{where}.runs") for r in _list(data.get("runs", []), f"{where}.runs")),
        note=_str(data, "note", where, default=""),
    )


def _scenario(value: object, where: str) -> ScenarioResult:
    data = _obj(value, where)
    name = _str(data, "name", where)
    here = f"{where}[{name}]"
    return ScenarioResult(
        name=name,
        options=_scalars(data.get("options", {}), f"{here}.options"),
        rows=tuple(_row(r, f"{here}.rows") for r in _list(data.get("rows", []), f"{here}.rows")),
        skipped=tuple(
            Skip(target=_str(_obj(s, here), "target", here), reason=_str(_obj(s, here), "reason", here))
            for s in _list(data.get("skipped", []), f"{here}.skipped")
        ),
        commands=_strs(data.get("commands", []), f"{here}.commands"),
        notes=_strs(data.get("notes", []), f"{here}.notes"),
        charts=_strs(data.get("charts", []), f"{here}.charts"),
    )


def _machine(value: object) -> Machine:
    data = _obj(value, "machine")
    tools = _obj(data.get("tools", {}), "machine.tools")
    return Machine(
        cores=_int(data, "cores", "machine"),
        cpu_model=_str(data, "cpu_model", "machine"),
        kernel=_str(data, "kernel", "machine"),
        python=_str(data, "python", "machine"),
        memory_gb=_num(_get(data, "memory_gb", "machine"), "machine.memory_gb"),
        tools={k: str(v) for k, v in tools.items()},
    )


def _bench_run(data: Mapping[str, object]) -> BenchRun:
    schema = _int(data, "schema", "run")
    if schema != SCHEMA_VERSION:
        raise ValueError(f"run.schema: this meshd-bench reads schema {SCHEMA_VERSION}, got {schema}")
    return BenchRun(
        schema=schema,
        started_at=_str(data, "started_at", "run"),
        finished_at=_str(data, "finished_at", "run"),
        invocation=_str(data, "invocation", "run"),
        machine=_machine(_get(data, "machine", "run")),
        scenarios=tuple(_scenario(s, "run.scenarios") for s in _list(data.get("scenarios", []), "scenarios")),
    )
