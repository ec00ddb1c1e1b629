"""``lakd bench``: run a named benchmark protocol for several methods and seeds, resumably, and tabulate it.

A protocol is a YAML file (``configs/protocols/<name>.yaml``, plain data): the configs every run shares, the
methods (each a method config plus overrides; ablations are just more entries), optional teacher/student pairs,
and default seeds. Each (pair, method, seed) is one ``lakd distill`` run in its own process and run folder, so a
crash or Ctrl-C loses at most the current epoch: the next ``lakd bench`` call skips finished runs, resumes
unfinished ones from ``last.pt`` and only then starts new ones.

Each finished run is written to ``<results>/<protocol>/[<pair>/]<method>-s<seed>.json`` (config, command, seed,
git commit, versions, device, per-epoch metrics, last and best-on-val test top-1, img/s, peak memory, wall time);
``summary.md`` / ``summary.json`` aggregate *all* results present (mean ± std over seeds) and two PNGs show
accuracy curves and accuracy against speed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lakd.atomic import atomic_write, atomic_write_text, read_json
from lakd.errors import LakdError, did_you_mean, first_line, short_repr
from lakd.report import load_run, plot_accuracy_vs_speed, plot_curves
from lakd.resources import configs_dir, shipped


@dataclass
class MethodEntry:
    name: str
    config: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Protocol:
    name: str
    path: Path
    configs: list[str]
    methods: dict[str, MethodEntry]
    default_methods: list[str]
    seeds: list[int]
    pairs: dict[str, str] = field(default_factory=dict)  # pair name -> its config (teacher, student, lr)
    # pair name -> method -> overrides after the method's own: a published per-pair setting that the pair's config
    # cannot carry because two entries share one method (kd and kd-ls are both `kd`)
    pair_overrides: dict[str, dict[str, list[str]]] = field(default_factory=dict)


@dataclass
class BenchRun:
    """One planned ``lakd distill`` run of a protocol."""

    protocol: Protocol
    method: str
    seed: int
    pair: str | None
    run_dir: Path
    result_path: Path
    epochs: int | None
    extra: list[str]

    @property
    def label(self) -> str:
        return f"{self.pair + '/' if self.pair else ''}{self.method} seed {self.seed}"

    def command(self, data_root: str | None, progress: bool) -> list[str]:
        """The ``lakd distill`` argument list that makes this run from scratch."""
        entry = self.protocol.methods[self.method]
        files = [*self.protocol.configs, *([self.protocol.pairs[self.pair]] if self.pair else []), entry.config]
        args = ["distill"]
        for f in files:
            args += ["-c", str(resolve_path(f, self.protocol.path))]
        args += ["--seed", str(self.seed), "--out", str(self.run_dir)]
        if self.epochs is not None:
            args += ["--epochs", str(self.epochs)]
        if data_root:
            args += ["--data-root", data_root]
        if not progress:
            args.append("--no-progress")
        pair_overrides = self.protocol.pair_overrides.get(self.pair, {}) if self.pair else {}
        return args + entry.overrides + pair_overrides.get(self.method, []) + self.extra


def find_protocol(name_or_path: str) -> Path:
    """A protocol YAML by path, or by name under ``configs/protocols`` (here, then the ones lakd ships)."""
    as_path = Path(name_or_path)
    if as_path.suffix in (".yaml", ".yml") or as_path.is_file():
        if not as_path.is_file():
            raise LakdError(f"protocol file '{as_path}' does not exist")
        return as_path
    folders = [Path("configs/protocols"), configs_dir() / "protocols"]
    for folder in folders:
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.yaml")})
    raise LakdError(f"unknown protocol '{name_or_path}'{did_you_mean(name_or_path, known)}; known: "
                    f"{', '.join(known) or 'none found'} (or give the path of a protocol YAML)")


def resolve_path(path: str, protocol_path: Path) -> Path:
    """A path named in a protocol: absolute, relative to the working folder or to the protocol's project (the
    folder holding its ``configs/``), or a file lakd ships (``configs/...``)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    parents = protocol_path.resolve().parents
    if len(parents) > 2 and (parents[2] / p).exists():  # <project>/configs/protocols/<name>.yaml
        return parents[2] / p
    packaged = shipped(p)
    if packaged is not None:
        return packaged
    raise LakdError(f"protocol '{protocol_path}' names '{path}', which exists neither here nor among the files "
                    "lakd ships")


def _typed(path: Path, key: str, value: Any, kind: str) -> Any:
    """``value`` checked against the shape a protocol key must have (protocols are data, checked like configs)."""
    def fail() -> LakdError:
        return LakdError(f"protocol '{path}': '{key}' must be {kind}, got {short_repr(value)}")

    if kind == "a string":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise fail()
        return str(value)
    if kind == "a list of strings":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail()
        return [str(v) for v in value]
    if kind == "a list of integers":
        if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in value):
            raise fail()
        return [int(v) for v in value]
    if kind.startswith("a mapping"):
        if not isinstance(value, dict):
            raise fail()
        return value
    raise AssertionError(kind)


def load_protocol(name_or_path: str) -> Protocol:
    path = find_protocol(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise LakdError(f"protocol '{path}' is not readable YAML ({type(exc).__name__}: "
                        f"{first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise LakdError(f"protocol '{path}' must be a mapping with keys name, configs, methods, seeds")
    allowed = {"name", "configs", "methods", "default_methods", "seeds", "pairs"}
    for key in raw:
        if key not in allowed:
            hint = did_you_mean(str(key), sorted(allowed))
            raise LakdError(f"protocol '{path}': unknown key {short_repr(key)}{hint}")
    methods: dict[str, MethodEntry] = {}
    entries = _typed(path, "methods", raw.get("methods") or {}, "a mapping of method names to {config, overrides}")
    for name, spec in entries.items():
        where = f"methods.{str(name)[:60]}"
        _check_name(path, "method", name)
        if not isinstance(spec, dict) or "config" not in spec or set(spec) - {"config", "overrides"}:
            raise LakdError(f"protocol '{path}': method {short_repr(name)} needs a 'config' (a method YAML) and "
                            "optional 'overrides' (a list of KEY=VALUE), nothing else")
        config = _typed(path, f"{where}.config", spec["config"], "a string")
        overrides = _typed(path, f"{where}.overrides", spec.get("overrides", []), "a list of strings")
        methods[str(name)] = MethodEntry(str(name), config, overrides)
    if not methods:
        raise LakdError(f"protocol '{path}' defines no methods")
    default_methods = _typed(path, "default_methods", raw.get("default_methods") or list(methods),
                             "a list of strings")
    for m in default_methods:
        if m not in methods:
            raise LakdError(f"protocol '{path}': default method '{m}' is not among its methods")
    pairs: dict[str, str] = {}
    pair_overrides: dict[str, dict[str, list[str]]] = {}
    raw_pairs = _typed(path, "pairs", raw.get("pairs") or {}, "a mapping of pair names to config files")
    for name, spec in raw_pairs.items():
        where = f"pairs.{str(name)[:60]}"
        _check_name(path, "pair", name)
        if isinstance(spec, dict):  # {config: FILE, overrides: {method: [KEY=VALUE, ...]}}
            if "config" not in spec or set(spec) - {"config", "overrides"}:
                raise LakdError(f"protocol '{path}': pair {short_repr(name)} needs a 'config' (a pair YAML) and "
                                "optional 'overrides' (a mapping of method names to lists of KEY=VALUE), nothing else")
            per_method = _typed(path, f"{where}.overrides", spec.get("overrides") or {},
                                "a mapping of method names to lists of KEY=VALUE")
            for method, values in per_method.items():
                if method not in methods:
                    raise LakdError(f"protocol '{path}': {where}.overrides names method {short_repr(method)}, "
                                    f"which is not among its methods{did_you_mean(str(method), list(methods))}")
                pair_overrides.setdefault(str(name), {})[str(method)] = _typed(
                    path, f"{where}.overrides.{method}", values, "a list of strings")
            spec = spec["config"]
        pairs[str(name)] = _typed(path, where, spec, "a string")
    return Protocol(name=_typed(path, "name", raw.get("name") or path.stem, "a string"), path=path,
                    configs=_typed(path, "configs", raw.get("configs", []), "a list of strings"),
                    methods=methods, default_methods=default_methods,
                    seeds=_typed(path, "seeds", raw.get("seeds", [0]), "a list of integers"),
                    pairs=pairs, pair_overrides=pair_overrides)


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def _check_name(path: Path, kind: str, name: Any) -> None:
    """A protocol's method and pair names become folder and file names under --runs-dir and --results-dir: a name
    that could leave them (``..``, a slash) or mean nothing to a file system is refused."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise LakdError(f"protocol '{path}': {kind} name {short_repr(name)} must be letters, digits and . _ + - "
                        "(at most 64, starting with a letter or digit, no '..'): it names a folder of the run")


def split_list(values: Sequence[str] | None) -> list[str]:
    """``--methods kd lakd`` and ``--methods kd,lakd`` both work."""
    return [v for item in values or [] for v in item.split(",") if v]


def plan_runs(
    protocol: Protocol,
    methods: Sequence[str] | None,
    seeds: Sequence[int] | None,
    pairs: Sequence[str] | None,
    epochs: int | None,
    runs_dir: Path,
    results_dir: Path,
    extra: Sequence[str] = (),
) -> list[BenchRun]:
    """Every (pair, method, seed) to run, checked against the protocol before anything starts."""
    methods = list(methods or protocol.default_methods)
    for m in methods:
        if m not in protocol.methods:
            raise LakdError(f"protocol '{protocol.name}' has no method '{m}'{did_you_mean(m, list(protocol.methods))}"
                            f"; it has: {', '.join(protocol.methods)}")
    if protocol.pairs:
        pair_list: list[str | None] = list(pairs or protocol.pairs)
        for p in pair_list:
            if p not in protocol.pairs:
                hint = did_you_mean(str(p), list(protocol.pairs))
                raise LakdError(f"protocol '{protocol.name}' has no pair '{p}'{hint}; it has: "
                                f"{', '.join(protocol.pairs)}")
    elif pairs:
        raise LakdError(f"protocol '{protocol.name}' has no teacher/student pairs; drop --pairs")
    else:
        pair_list = [None]
    label = protocol.name if epochs is None else f"{protocol.name}-e{epochs}"
    runs = []
    for pair in pair_list:
        sub = Path(label, pair) if pair else Path(label)
        for method in methods:
            for seed in seeds if seeds is not None else protocol.seeds:
                runs.append(BenchRun(protocol, method, int(seed), pair, runs_dir / sub / f"{method}-s{seed}",
                                     results_dir / sub / f"{method}-s{seed}.json", epochs, list(extra)))
    return runs


def run_state(run: BenchRun) -> str:
    """done (result written) | collect (finished, not yet written) | resume | restart | new."""
    if run.result_path.is_file():
        return "done"
    if (run.run_dir / "summary.json").is_file():
        return "collect"
    if (run.run_dir / "last.pt").is_file():
        return "resume"
    if run.run_dir.is_dir() and any(run.run_dir.iterdir()):
        return "restart"  # died before its first checkpoint: nothing to keep
    return "new"


def command_config(command: list[str]) -> Any:
    """The ``DistillRunConfig`` a ``lakd distill`` argument list's ``-c`` files and overrides give (no flags)."""
    from lakd.config import DistillRunConfig, build_config

    files = [command[i + 1] for i, a in enumerate(command) if a == "-c"]
    overrides = [a for a in command if "=" in a and not a.startswith("-")]
    return build_config(DistillRunConfig, files, overrides, {})


def planned_params(run: BenchRun) -> dict[str, Any]:
    """The method parameters ``run``'s command resolves to now (its configs and overrides, defaults included)."""
    from lakd.distill import make_params, params_as_dict

    cfg = command_config(run.command(None, progress=False))
    return params_as_dict(make_params(cfg.distill.method, cfg.distill.resolved_params()))


def recorded_params(result: dict[str, Any]) -> dict[str, Any] | None:
    """The method parameters a result was made with: as it recorded them resolved, or, for results written before
    runs recorded them, its recorded config's method and parameters resolved by today's defaults (so a preset
    whose settings changed since is caught, a default that changed is not); ``None`` without either."""
    from lakd.config import DistillConfig
    from lakd.distill import DISTILLERS, make_params, method_class, params_as_dict

    section = (result.get("config") or {}).get("distill")
    method = section.get("method") if isinstance(section, dict) else None
    renamed = DISTILLERS[method].renamed_params if method in DISTILLERS else {}
    params = (result.get("distill") or {}).get("params")
    if params is not None:
        return {renamed.get(k, k): v for k, v in params.items()}
    if not isinstance(section, dict) or "method" not in section:
        return None
    try:
        given = DistillConfig(method=section["method"], params=section.get("params") or {},
                              per_method=section.get("per_method") or {})
        values = {renamed.get(k, k): v for k, v in given.resolved_params().items()}
        try:
            return params_as_dict(make_params(given.method, values))
        except LakdError:  # parameters the method gave to another since (lakd's variants: lakd-study) resolve there
            heir = method_class(given.method).params_moved_to
            if heir is None:
                raise
            return params_as_dict(make_params(heir, values))
    except LakdError as e:  # its method or parameters no longer exist: it cannot be what the command gives now
        return {"(recorded config)": str(e)}


def stale_difference(run: BenchRun) -> str | None:
    """For a finished run whose result records its parameters: how they differ from what its command gives now
    (``None`` when they agree or the result records neither them nor its config)."""
    from lakd.distill import method_class

    recorded = recorded_params(read_json(run.result_path, "result"))
    if recorded is None:
        return None
    now = planned_params(run)
    # a parameter on one side only, at the value at which it does nothing, is no difference (one the method no
    # longer has, or a variant added since)
    inert = method_class(command_config(run.command(None, progress=False)).distill.method).inert_params
    changed = [f"{k}: {short_repr(recorded.get(k, '(absent)'))} -> {short_repr(now.get(k, '(absent)'))}"
               for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)
               and not ((k in recorded) != (k in now) and k in inert and {**recorded, **now}[k] == inert[k])]
    return ", ".join(changed) or None


def _display(args: list[str]) -> str:
    return "lakd " + " ".join(shlex.quote(a) for a in args)


def execute(run: BenchRun, data_root: str | None, progress: bool) -> int:
    """Run (or resume) one ``lakd distill`` in a child process; returns its exit code."""
    args = run.command(data_root, progress)
    state = run_state(run)
    if state == "resume":
        args.append("--resume")
    elif state == "restart":
        args.append("--force")
    print(f"\n[bench] {run.label}: {state} -> {_display(args)}", flush=True)
    return run_child([sys.executable, "-m", "lakd", *args])


def run_child(cmd: list[str]) -> int:
    """Run ``cmd`` and wait; SIGTERM / SIGINT / SIGHUP to the bench are passed on to the child, which then
    checkpoints and exits (143 / 130), so a stopped bench never leaves a run training on its own."""
    child = subprocess.Popen(cmd)
    previous = {}

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous[signum] = signal.signal(signum, forward)
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # a second Ctrl-C while waiting: keep waiting for the checkpoint
                continue
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def collect(run: BenchRun, data_root: str | None, bench_command: str) -> dict[str, Any]:
    """Turn a finished run folder into the result JSON (written atomically)."""
    record = load_run(run.run_dir)
    if record.summary is None:
        raise LakdError(f"run '{run.run_dir}' has not finished (no summary.json)")
    s = record.summary
    result = {
        "protocol": run.protocol.name, "pair": run.pair, "method": run.method,
        "distill_method": (s.get("config") or {}).get("distill", {}).get("method"), "seed": run.seed,
        "command": _display(run.command(data_root, progress=False)), "bench_command": bench_command,
        "run_dir": str(run.run_dir), "config": s.get("config"), "environment": s.get("environment"),
        "env": s.get("env"), "data": s.get("data"), "distill": s.get("distill"), "epochs": record.epochs,
        "last_test_top1": s.get("last_test_top1"), "last_val_top1": s.get("last_val_top1"),
        "best_val_epoch": s.get("best_epoch"), "best_val_top1": s.get("best_val_top1"),
        "best_test_top1": s.get("best_test_top1"), "img_per_s": s.get("train_img_per_s"),
        "peak_mem_mb": s.get("peak_mem_mb"), "train_wall_s": s.get("train_wall_s"),
        "wall_s": s.get("fit_wall_s"), "collected": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write(run.result_path, lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(mean: float, std: float | None, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def summarise(results_root: Path, title: str | None = None) -> dict[str, Any]:
    """Aggregate every ``*-s<seed>.json`` under one protocol (or pair) folder: table, JSON and PNGs."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results_root.glob("*-s*.json")):
        result = read_json(path, "result")
        # by the file's label: a result kept under the entry that reproduces it after a preset changed (its own
        # "method" records the name it ran under)
        rows.setdefault(path.stem.rsplit("-s", 1)[0], []).append(result)
    if not rows:
        raise LakdError(f"no results under '{results_root}' yet")
    methods = []
    for method, results in rows.items():
        results.sort(key=lambda r: r["seed"])
        best = [r["best_test_top1"] for r in results if r.get("best_test_top1") is not None]
        last = [r["last_test_top1"] for r in results if r.get("last_test_top1") is not None]
        val = [r["best_val_top1"] for r in results if r.get("best_val_top1") is not None]
        speed = [r["img_per_s"] for r in results if r.get("img_per_s")]
        mem = [r["peak_mem_mb"] for r in results if r.get("peak_mem_mb")]
        wall = [r["wall_s"] for r in results if r.get("wall_s")]
        epochs = sorted({len(r["epochs"]) for r in results})
        entry: dict[str, Any] = {"method": method, "seeds": [r["seed"] for r in results], "epochs": epochs}
        for key, values in (("best_test_top1", best), ("last_test_top1", last), ("best_val_top1", val),
                            ("img_per_s", speed), ("peak_mem_mb", mem), ("wall_s", wall)):
            if values:
                mean, std = _mean_std(values)
                entry[key] = {"mean": mean, "std": std, "values": values}
        curve_len = min(len(r["epochs"]) for r in results)
        entry["mean_curve"] = [
            {"epoch": i + 1, **{k: statistics.fmean(r["epochs"][i][k] for r in results)
                                for k in ("val_top1", "test_top1", "train_loss") if k in results[0]["epochs"][i]}}
            for i in range(curve_len)
        ]
        methods.append(entry)
    methods.sort(key=lambda e: -(e.get("best_val_top1", {}).get("mean") or -math.inf))
    lines = [f"# {title or results_root.name}", "",
             "Test top-1 (%) at the epoch with the best validation top-1, and at the last epoch; mean ± sample std "
             "over seeds. Sorted by mean validation top-1 (the selection criterion; test is never used to choose).",
             "", "| method | seeds | epochs | best-val test top-1 | last test top-1 | val top-1 | img/s | "
             "peak MB | wall min |", "|---|---|---|---|---|---|---|---|---|"]
    for e in methods:
        def cell(key: str, digits: int = 2, scale: float = 1.0, e: dict[str, Any] = e) -> str:
            if key not in e:
                return "–"
            return _fmt(e[key]["mean"] / scale, None if e[key]["std"] is None else e[key]["std"] / scale, digits)
        lines.append(f"| {e['method']} | {','.join(map(str, e['seeds']))} | {','.join(map(str, e['epochs']))} | "
                     f"{cell('best_test_top1')} | {cell('last_test_top1')} | {cell('best_val_top1')} | "
                     f"{cell('img_per_s', 0)} | {cell('peak_mem_mb', 0)} | {cell('wall_s', 1, 60.0)} |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(results_root / "summary.md", table)
    atomic_write_text(results_root / "summary.json",
                      json.dumps({"title": title or results_root.name, "methods": methods}, indent=2))
    plot_curves({e["method"]: e["mean_curve"] for e in methods}, results_root / "accuracy_curves.png",
                title=f"{title or results_root.name}: seed-averaged curves")
    points = [{"label": e["method"], "img_per_s": e["img_per_s"]["mean"], "top1_mean": e["best_test_top1"]["mean"],
               "top1_std": e["best_test_top1"]["std"]} for e in methods if "img_per_s" in e and "best_test_top1" in e]
    plot_accuracy_vs_speed(points, results_root / "accuracy_vs_speed.png", title=title or results_root.name)
    return {"table": table, "methods": methods}


def run_bench(
    protocol_name: str,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    pairs: Sequence[str] | None = None,
    epochs: int | None = None,
    runs_dir: str | Path = "runs/bench",
    results_dir: str | Path = "benchmarks/results",
    data_root: str | None = None,
    progress: bool = True,
    dry_run: bool = False,
    extra: Sequence[str] = (),
    bench_command: str = "",
) -> int:
    """Plan, run/resume, collect and summarise; returns 0 when every planned run finished."""
    protocol = load_protocol(protocol_name)
    runs = plan_runs(protocol, methods, seeds, pairs, epochs, Path(runs_dir), Path(results_dir), extra)
    if dry_run:
        for run in runs:
            state = run_state(run)
            state = "stale" if state == "done" and stale_difference(run) else state
            print(f"{state:>8}  {_display(run.command(data_root, progress))}")
        return 0
    stale = [f"{run.label} ({run.result_path}: {diff})" for run in runs
             if run_state(run) == "done" and (diff := stale_difference(run))]
    if stale:  # a table must not mix parameters under one name; nothing has run or been written yet
        raise LakdError("finished results made with other parameters than the protocol now gives: "
                        + "; ".join(stale) + ". Move each result (and its run folder) away to rerun it with the "
                        "current parameters, or give the protocol an entry with the old ones")
    order = {"done": 0, "collect": 1, "resume": 2, "restart": 3, "new": 4}
    failed = []
    to_train = sum(run_state(r) not in ("done", "collect") for r in runs)
    trained: list[float] = []  # wall seconds of the runs trained by this bench so far
    for run in sorted(runs, key=lambda r: order[run_state(r)]):
        state = run_state(run)
        if state == "done":
            print(f"[bench] {run.label}: done ({run.result_path})")
            continue
        if state != "collect":
            left = to_train - len(trained)
            if trained:  # the finished runs' mean as the estimate of the rest (each run prints its own too)
                print(f"[bench] {len(trained)} of {to_train} runs trained in {sum(trained) / 60:.0f} min; about "
                      f"{left * sum(trained) / len(trained) / 60:.0f} min for the {left} left", flush=True)
            started = time.perf_counter()
            rc = execute(run, data_root, progress)
            trained.append(time.perf_counter() - started)
            if rc != 0:
                failed.append(f"{run.label} (exit {rc}; its output is above, its files in {run.run_dir})")
                if rc in (130, 143, -2, -15):  # Ctrl-C / SIGTERM: stop the whole bench; the run resumes next time
                    break
                continue
        collect(run, data_root, bench_command)
        # Keep the table current while a long bench runs (and if it is stopped half-way).
        summarise(run.result_path.parent, title=str(run.result_path.parent.relative_to(Path(results_dir))))
    for folder in sorted({r.result_path.parent for r in runs}):
        if any(folder.glob("*-s*.json")):
            out = summarise(folder, title=str(folder.relative_to(Path(results_dir))))
            print(f"\n{out['table']}\n[bench] table, curves and accuracy-vs-speed plot in {folder}/")
    if failed:
        print("[bench] unfinished: " + "; ".join(failed) + ". Run the same command again to resume.",
              file=sys.stderr)
        return 1
    return 0


def current_command() -> str:
    """How this bench was invoked (recorded in each result)."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("LAKD_DATA",) if k in os.environ)
    return (env + " " if env else "") + "lakd " + " ".join(shlex.quote(a) for a in sys.argv[1:])
