"""The JSON and the table of ``benchmarks/gpu_check.sh``: reads its step records and the steps' run folders.

    python benchmarks/gpu_check_summary.py --records WORK/records --out FILE [KEY=VALUE ...]

Each record folder (``NN-name/``) holds ``name``, ``kind`` (train | distill | resume | export | eval), ``run_dir``,
optionally ``status`` + ``note`` (skipped / not_run, set by the script), and one ``pN/`` folder per process the
step ran, with ``argv`` (NUL-separated), ``rc``, ``wall_us``, ``stdout`` and ``stderr``. A step is ``ok`` when
every process exited 0 *and* what it should have written is there (metrics.jsonl rows with img/s > 0, the resume
run's two epochs, the ONNX file that onnxruntime runs, eval's JSON). KEY=VALUE pairs are the script's settings.
The JSON is written to a temp file beside ``--out`` and renamed over it. Exit code 0 when every step is ok or
skipped, else 1. Only the standard library at import time; torch (for the device name) and onnxruntime are
imported where needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

SCHEMA = "lakd-gpu-check/1"
TAIL_LINES = 25
TIMEOUT_CODES = {124: "timed out (SIGTERM from timeout)", 137: "killed (SIGKILL: timeout's -k, or out of memory)"}
GOOD = ("ok", "skipped")


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return default


def _tail(text: str, n: int = TAIL_LINES) -> list[str]:
    return text.rstrip("\n").splitlines()[-n:]


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value, value)


# -- environment ----------------------------------------------------------------------------------------------
def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "hostname": socket.gethostname(), "cpu_model": _cpu_model(), "cpu_count": os.cpu_count()}
    try:
        import lakd

        env["lakd"] = getattr(lakd, "__version__", None)
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        env["lakd"] = f"import failed: {exc}"
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        env["torch"] = f"import failed: {exc}"
        return env
    env.update({"torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
                "torch_threads": torch.get_num_threads()})
    try:
        env["cuda_available"] = torch.cuda.is_available()
        if env["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            env.update({"device_name": torch.cuda.get_device_name(0), "device_count": torch.cuda.device_count(),
                        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                        "device_memory_gib": round(props.total_memory / 2**30, 1),
                        "cudnn": torch.backends.cudnn.version(), "bf16_supported": torch.cuda.is_bf16_supported()})
        elif device == "cpu":
            env["device_name"] = f"cpu: {env['cpu_model']} ({env['cpu_count']} cores)"
        else:
            env["cuda_error"] = "torch.cuda.is_available() is False" + (
                "" if torch.version.cuda else f" (torch {torch.__version__} is a CPU-only build)")
    except Exception as exc:  # noqa: BLE001 - a broken driver is a finding, not a crash
        env["cuda_error"] = f"{type(exc).__name__}: {exc}"
    return env


# -- one step -------------------------------------------------------------------------------------------------
def _phases(rec: Path) -> list[dict[str, Any]]:
    phases = []
    for p in sorted(rec.glob("p*"), key=lambda q: int(q.name[1:]) if q.name[1:].isdigit() else 0):
        argv = [a for a in _read(p / "argv").split("\0") if a]
        rc_text = _read(p / "rc").strip()
        phases.append({"dir": p, "command": shlex.join(argv), "exit_code": int(rc_text) if rc_text else None,
                       "wall_s": round(int(_read(p / "wall_us", "0") or 0) / 1e6, 3),
                       "stdout": _read(p / "stdout"), "stderr": _read(p / "stderr"),
                       "sigterm_sent": _read(p / "sigterm_sent").strip() == "1" if (p / "sigterm_sent").exists()
                       else None})
    return phases


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for line in _read(run_dir / "metrics.jsonl").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def _training_fields(run_dir: Path, batch: int) -> tuple[dict[str, Any], list[str]]:
    """img/s, peak memory, epochs ... of a run folder, and what is missing or wrong in it."""
    problems: list[str] = []
    out: dict[str, Any] = {}
    try:
        rows = _metrics(run_dir)
    except (OSError, ValueError) as exc:
        return out, [f"metrics.jsonl unreadable: {exc}"]
    if not rows:
        return out, [f"no metrics.jsonl rows in {run_dir}"]
    speeds = [r.get("img_per_s") for r in rows]
    out["epochs"] = [r.get("epoch") for r in rows]
    out["img_per_s"] = round(sum(s for s in speeds if s) / len(rows), 1) if all(speeds) else None
    out["img_per_s_per_epoch"] = [round(s, 1) if s else s for s in speeds]
    out["peak_mem_mb"] = round(max(r.get("peak_mem_mb") or 0.0 for r in rows), 1)
    out["train_time_s"] = round(sum(r.get("train_time_s") or 0.0 for r in rows), 3)
    images = sum((r.get("img_per_s") or 0.0) * (r.get("train_time_s") or 0.0) for r in rows)
    out["train_steps"] = round(images / batch) if batch else None
    for key in ("train_loss", "train_top1", "val_top1"):
        if key in rows[-1]:
            out[key] = round(rows[-1][key], 4)
    bad = [i + 1 for i, s in enumerate(speeds) if not (isinstance(s, int | float) and s > 0 and math.isfinite(s))]
    if bad:
        problems.append(f"img_per_s missing or not > 0 in epoch(s) {bad}")
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
            out["summary"] = {k: summary.get(k) for k in ("epochs", "train_img_per_s", "peak_mem_mb", "best_epoch",
                                                          "best_val_top1", "fit_wall_s")}
        except ValueError as exc:
            problems.append(f"summary.json unreadable: {exc}")
    else:
        problems.append("no summary.json (the run did not finish)")
    try:
        env = json.loads((run_dir / "run.json").read_text()).get("environment", {})
        out["runtime"] = env.get("device")  # e.g. "cuda:0 (NVIDIA H200), bf16, channels_last"
        out["world_size"] = env.get("world_size")
        out["git_commit"] = env.get("git_commit")
    except (OSError, ValueError):
        problems.append("no readable run.json")
    return out, problems


def _check_onnx(path: Path) -> tuple[dict[str, Any], list[str]]:
    if not path.is_file() or path.stat().st_size == 0:
        return {}, [f"no ONNX file at {path}"]
    info: dict[str, Any] = {"onnx_file": str(path), "onnx_bytes": path.stat().st_size}
    try:
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 2 for d in inp.shape]  # symbolic (dynamic) batch -> 2
        (logits,) = session.run(None, {inp.name: np.zeros(shape, dtype=np.float32)})
        info.update({"onnx_input": [inp.name, list(inp.shape)], "onnxruntime_logits_shape": list(logits.shape)})
        if logits.shape[0] != shape[0] or not np.isfinite(logits).all():
            return info, [f"onnxruntime gave logits of shape {logits.shape} (finite: {np.isfinite(logits).all()})"]
    except Exception as exc:  # noqa: BLE001
        return info, [f"onnxruntime could not run the export: {type(exc).__name__}: {exc}"]
    return info, []


def step_result(rec: Path, settings: dict[str, Any]) -> dict[str, Any]:
    name, kind = _read(rec / "name"), _read(rec / "kind")
    run_dir = Path(_read(rec / "run_dir")) if _read(rec / "run_dir") else None
    phases = _phases(rec)
    codes = [p["exit_code"] for p in phases]
    result: dict[str, Any] = {"name": name, "kind": kind, "status": None, "exit_code": None,
                              "wall_s": round(sum(p["wall_s"] for p in phases), 3),
                              "run_dir": str(run_dir) if run_dir else None}
    if len(phases) == 1:
        result["command"] = phases[0]["command"]
    elif phases:
        result["phases"] = [{"command": p["command"], "exit_code": p["exit_code"], "wall_s": p["wall_s"],
                             **({"sigterm_sent": p["sigterm_sent"]} if p["sigterm_sent"] is not None else {})}
                            for p in phases]
    result["exit_code"] = next((c for c in codes if c != 0), codes[-1] if codes else None)
    if kind == "resume" and codes:  # the interrupted first run's 143 is expected: report how it ended
        result["exit_code"] = codes[-1]
    problems: list[str] = []
    if (rec / "status").is_file():
        result["status"], note = _read(rec / "status"), _read(rec / "note")
        result["note"] = note
        return result
    batch = int(settings.get("batch") or 0)
    resume_mode = _read(rec / "resume_mode") or None
    if kind == "resume":
        result["resume_mode"] = resume_mode
        first = codes[0] if codes else None
        if resume_mode == "signal":
            if first == 0:
                problems.append("the run finished before SIGTERM took effect: resume not exercised")
            elif first != 143:
                problems.append(f"interrupted run exited {first}, not 143 (SIGTERM)")
        elif first != 0:
            problems.append(f"first run (--epochs 1) exited {first}")
        if len(phases) < 2:
            problems.append("the --resume run did not start")
        elif phases[1]["exit_code"] != 0:
            problems.append(f"the --resume run exited {phases[1]['exit_code']}")
        elif "resumed from" not in phases[1]["stdout"] + phases[1]["stderr"]:
            problems.append("the --resume run did not say 'resumed from ...'")
    elif any(c != 0 for c in codes) or not codes:
        c = result["exit_code"]
        problems.append(TIMEOUT_CODES.get(c, f"exit code {c}") if codes else "did not run")
    if kind in ("train", "distill", "resume") and run_dir is not None and (run_dir / "metrics.jsonl").exists():
        fields, more = _training_fields(run_dir, batch)
        result.update(fields)
        if not problems:
            problems += more
        expected = [1, 2] if kind == "resume" else [1]
        if not problems and fields.get("epochs") != expected:
            problems.append(f"metrics.jsonl has epochs {fields.get('epochs')}, expected {expected}")
        if not problems and kind == "resume" and (fields.get("summary") or {}).get("epochs") != 2:
            problems.append(f"summary.json says epochs {(fields.get('summary') or {}).get('epochs')}, expected 2")
        if name.startswith("torchrun") and fields.get("world_size") == 1:
            result["note"] = ("1 process: lakd sees WORLD_SIZE=1 and trains single-process (no process group, "
                              "no SyncBatchNorm / all-reduce)")
    elif kind in ("train", "distill", "resume") and not problems:
        problems.append("no metrics.jsonl in the run folder")
    if kind == "export" and not problems and run_dir is not None:
        info, more = _check_onnx(run_dir / "student.onnx")
        result.update(info)
        problems += more
    if kind == "eval" and not problems:
        try:
            data = json.loads(phases[0]["stdout"])
            result["eval"] = {k: data.get(k) for k in ("top1", "top5", "loss", "img_per_s", "images", "split",
                                                        "device")}
            result["img_per_s"] = round(data["img_per_s"], 1)
            if not isinstance(data.get("top1"), int | float):
                problems.append("eval JSON has no top1")
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"eval did not print JSON ({type(exc).__name__}: {exc})")
    result["status"] = "failed" if problems else "ok"
    if problems:
        result["problems"] = problems
        result["log_tail"] = [line for p in phases for line in _tail(p["stderr"] or p["stdout"])][-TAIL_LINES:]
    return result


# -- output ---------------------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def table(steps: list[dict[str, Any]]) -> str:
    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, int | float) and not isinstance(v, bool) else "-"

    lines = [f"{'step':<12} {'status':<8} {'exit':>4} {'wall s':>7} {'img/s':>9} {'peak MB':>8}  note"]
    for s in steps:
        note = s.get("note") or "; ".join(s.get("problems", []))
        if not note and s.get("kind") == "eval" and s.get("eval"):
            note = f"top-1 {s['eval'].get('top1')} on {s['eval'].get('images')} images"
        if not note and s.get("kind") == "export" and s.get("onnx_bytes"):
            note = f"{s['onnx_bytes']} bytes; onnxruntime logits {s.get('onnxruntime_logits_shape')}"
        if not note and s.get("runtime"):
            note = s["runtime"]
        lines.append(f"{s['name']:<12} {s['status']:<8} {num(s.get('exit_code'), 'd'):>4} "
                     f"{num(s.get('wall_s'), '.1f'):>7} {num(s.get('img_per_s'), '.0f'):>9} "
                     f"{num(s.get('peak_mem_mb'), '.0f'):>8}  {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    settings: dict[str, Any] = {}
    for item in args.settings:
        key, _, value = item.partition("=")
        settings[key] = _number(value)
    started, wall_us = settings.pop("started", None), settings.pop("wall_us", None)
    interrupted = bool(settings.pop("interrupted", 0))
    data = {"dataset": settings.pop("dataset", None), "root": settings.pop("data_root", None) or None,
            "root_from": settings.pop("data_root_from", None), "why": settings.pop("data_why", None),
            "train_images_per_run": settings.pop("train_limit", None)}
    steps = []
    for rec in sorted(p for p in args.records.iterdir() if p.is_dir()):
        try:
            steps.append(step_result(rec, settings))
        except Exception as exc:  # noqa: BLE001 - one unreadable record must not cost the whole JSON
            steps.append({"name": _read(rec / "name") or rec.name, "kind": _read(rec / "kind"), "status": "failed",
                          "problems": [f"could not read the step's record: {type(exc).__name__}: {exc}"]})
    failed = [s["name"] for s in steps if s["status"] not in GOOD]
    env = environment(str(settings.get("device")))
    commits = {s.get("git_commit") for s in steps if s.get("git_commit")}
    if commits:
        env["git_commit"] = sorted(commits)[0] if len(commits) == 1 else sorted(commits)
    for s in steps:
        s.pop("git_commit", None)
    report = {
        "schema": SCHEMA, "ok": not failed and not interrupted, "failed_steps": failed, "interrupted": interrupted,
        "started": started, "total_wall_s": round(wall_us / 1e6, 1) if isinstance(wall_us, int) else None,
        "device": settings.get("device"), "device_name": env.get("device_name"), "torch": env.get("torch"),
        "data": data, "settings": settings, "environment": env,
        "units": {"img_per_s": "training images/s over the epoch, first (warm-up) step included (lakd's img_per_s)",
                  "peak_mem_mb": "MiB: torch.cuda.max_memory_allocated on cuda, peak process RSS on cpu"},
        "steps": steps,
    }
    write_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(table(steps))
    where = f"{env.get('device_name') or settings.get('device')}, torch {env.get('torch')}"
    verdict = "all steps ok" if not failed else f"FAILED: {', '.join(failed)}"
    print(f"{verdict} ({where}, {data['dataset']} data, {report['total_wall_s']} s) -> {args.out}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
