"""Training speed and memory of every method of a protocol, measured back to back on a quiet machine.

The img/s a protocol's training runs record is only as clean as the machine was during hours of training (other
jobs, resumes); this measures each method once more, one after another in one invocation, with the protocol's
exact command (its configs, method config and overrides, `lakd bench`'s own command line), cut to a few steps:
two epochs of ``--steps`` steps each, the second one reported (the first holds start-up and, when compiled, the one-off
compilation). Each method runs in its own process, as in the protocol. The epochs are cut with
``train.max_steps_per_epoch``, never by shrinking the training set: a method whose state is sized by the training
set (CRD's memory bank holds every sample's embedding, and every step scores against it) then costs what it costs in
the protocol's run. (Measurements made before 2026-12-05 cut the set to ``--steps`` batches, which left CRD a bank of
that many samples, 1.3-1.5x too fast; their files record ``data.train_limit`` in each command.)

Run:  LAKD_DATA=../shared/data python benchmarks/method_speed.py cifar10-strong [--steps 100]
          [--methods kd lakd ...] [--compile true] [--repeats 3] [--vary train.malloc=auto,system]
          [--out benchmarks/results/method_speed_cifar10-strong.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lakd.bench import load_protocol, plan_runs
from lakd.run import environment_info

REPO = Path(__file__).resolve().parents[1]


def measure(command: list[str], steps: int, compile_choice: str, extra: tuple[str, ...] = ()
            ) -> dict[str, Any]:
    """Two short epochs of ``lakd distill`` ``command`` (its ``--out`` replaced) with ``extra`` overrides; the
    second epoch's numbers."""
    with tempfile.TemporaryDirectory(prefix="method-speed-") as tmp:
        out = Path(tmp) / "run"
        args = list(command)
        args[args.index("--out") + 1] = str(out)
        args += ["--epochs", "2", f"train.max_steps_per_epoch={steps}", "train.eval_test=false",
                 "data.test_limit=500", f"distill.compile={compile_choice}", *extra, "--no-progress"]
        faults_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "lakd", *args], cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        # the whole process's (start-up, compilation and evaluation included): for an A/B of the allocator
        faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults_before
        if proc.returncode != 0:
            return {"status": "failed", "exit_code": proc.returncode, "reason": proc.stderr.strip()[-500:],
                    "command": " ".join(["lakd", *args])}
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        meta = json.loads((out / "run.json").read_text())["environment"]
    first, last = rows[0], rows[-1]
    return {"status": "ok", "img_per_s": last["img_per_s"], "peak_mem_mb": last["peak_mem_mb"],
            "train_s": last["train_time_s"], "first_epoch_extra_s": first["train_time_s"] - last["train_time_s"],
            "steps": steps, "wall_s": wall, "minor_page_faults": faults, "malloc": meta.get("malloc"),
            "device": meta.get("device"), "torch_threads": meta.get("torch_threads"),
            "command": " ".join(["lakd", *args])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every method of the protocol")
    parser.add_argument("--pairs", nargs="*", default=None, help="the protocol's pairs (default: every pair)")
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch (two epochs, the second reported)")
    parser.add_argument("--compile", default="true", choices=("auto", "true", "false"),
                        help="distill.compile for every method (default true: what auto picks for a "
                             "run of 1,000+ steps, such as a whole protocol run)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over the methods, interleaved (A B C A B C ...); the median round is "
                             "reported and every round is kept")
    parser.add_argument("--vary", default=None, metavar="KEY=V1,V2,...",
                        help="measure every method once per value of this config key, interleaved in each round "
                             "(an A/B of a setting, back to back); results are named 'method KEY=V'")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every method (repeatable), e.g. distill.teacher=FILE to time a "
                             "protocol before its teachers exist (speed does not depend on the teacher's weights)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    variants: list[tuple[str, tuple[str, ...]]] = [("", ())]
    if args.vary:
        key, sep, values = args.vary.partition("=")
        if not sep or not key or not values:
            parser.error(f"--vary {args.vary!r}: expected KEY=V1,V2 (e.g. train.malloc=auto,system)")
        variants = [(f" {key}={v}", (f"{key}={v}",)) for v in values.split(",")]
    protocol = load_protocol(args.protocol)
    methods = args.methods or list(protocol.methods)
    unknown = [m for m in methods if m not in protocol.methods]
    if unknown:
        parser.error(f"unknown method(s) {unknown} of protocol {protocol.name}")
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        runs = plan_runs(protocol, methods, [0], args.pairs, None, Path(tmp), Path(tmp), args.set)
    data_root = os.environ.get("LAKD_DATA")
    def key(run: Any) -> str:
        return f"{run.pair}/{run.method}" if run.pair else run.method

    rounds: dict[str, list[dict[str, Any]]] = {key(run) + name: [] for run in runs for name, _ in variants}
    pair_of = {key(run) + name: run.pair for run in runs for name, _ in variants}
    for round_index in range(args.repeats):
        for run, (name, extra) in ((run, v) for run in runs for v in variants):  # never two on the CPU at once
            command = run.command(data_root, progress=False)
            print(f"{key(run)}{name} (round {round_index + 1}/{args.repeats}) ...", flush=True)
            r = measure(command, args.steps, args.compile, extra)
            rounds[key(run) + name].append(r)
            print(f"  {r['img_per_s']:.0f} img/s, peak {r['peak_mem_mb']:.0f} MB" if r["status"] == "ok"
                  else f"  failed: {r['reason'][-200:]}", flush=True)
    results = {method: median_round(measured) for method, measured in rounds.items()}
    # each method against the first method of its own pair (of the protocol, where it has no pairs)
    bases = {pair_of[k]: k for k in reversed(list(rounds))}
    ratios = {}
    for pair, base in bases.items():
        ratios.update(paired_ratios({k: v for k, v in rounds.items() if pair_of[k] == pair}, base))
    base = ", ".join(bases.values())
    record = {"benchmark": "method_speed", "protocol": protocol.name, "steps_per_epoch": args.steps,
              "compile": args.compile, "repeats": args.repeats, "vary": args.vary, "set": args.set,
              "timing": "second of two epochs of --steps steps, each method in its own process, back to back; "
                        "with --repeats, rounds interleaved and the median round reported",
              "environment": {**environment_info(), "loadavg_end": os.getloadavg()}, "methods": results,
              "paired_speed": {"base": base, "ratios": ratios}}
    for method, ratio in record["paired_speed"]["ratios"].items():
        within = "(median over rounds of the within-round ratio)"
        print(f"{method}: {ratio:.3f}x {bases[pair_of[method]]} {within}" if ratio is not None else f"{method}: failed")
    out = args.out or REPO / "benchmarks" / "results" / f"method_speed_{protocol.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


def median_round(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median img/s (the lower middle of an even count), with every round's img/s beside it;
    a failed round makes the method failed."""
    failed = [r for r in measured if r["status"] != "ok"]
    if failed:
        return failed[0]
    ordered = sorted(measured, key=lambda r: r["img_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(measured) > 1:
        chosen["img_per_s_rounds"] = [r["img_per_s"] for r in measured]
    return chosen


def paired_ratios(rounds: dict[str, list[dict[str, Any]]], base: str) -> dict[str, float | None]:
    """Per method, the median over rounds of its img/s divided by ``base``'s in the same round: on a machine whose
    speed drifts, a ratio within one round (minutes apart) is steadier than a ratio of medians. ``None`` where a
    round failed."""
    ratios: dict[str, float | None] = {}
    for method, measured in rounds.items():
        pairs = list(zip(rounds[base], measured, strict=True))
        if any(a["status"] != "ok" or b["status"] != "ok" for a, b in pairs):
            ratios[method] = None
            continue
        ratios[method] = statistics.median(b["img_per_s"] / a["img_per_s"] for a, b in pairs)
    return ratios


if __name__ == "__main__":
    raise SystemExit(main())
