"""`lakd bench` and `lakd report` on a tiny synthetic protocol: results, tables, plots, skip/resume, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from lakd.bench import load_protocol, plan_runs, run_state
from lakd.cli import main
from lakd.errors import LakdError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--dataset", "synthetic", "--epochs", "1", "--no-progress", "--precision", "fp32",
        "data.synthetic_size=96", "data.val_size=16", "data.batch_size=16"]


@pytest.fixture(scope="module")
def tiny_protocol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A protocol file in the format of configs/protocols/*.yaml, on synthetic data with a tiny teacher."""
    root = tmp_path_factory.mktemp("proto")
    teacher = root / "teacher"
    assert main(["train", "--model", "resnet8", "--out", str(teacher), *TINY]) == 0
    base = {"model": {"name": "resnet8"},
            "data": {"dataset": "synthetic", "synthetic_size": 96, "val_size": 16, "batch_size": 16,
                     "eval_batch_size": 64},
            "train": {"epochs": 1, "precision": "fp32"},
            "distill": {"teacher": str(teacher / "best.pt")}}
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    for method in ("vanilla", "kd"):
        (root / f"{method}.yaml").write_text(yaml.safe_dump({"distill": {"method": method}}))
    protocol = {"name": "tiny", "configs": [str(root / "base.yaml")], "seeds": [0, 1],
                "default_methods": ["vanilla", "kd"],
                "methods": {"vanilla": {"config": str(root / "vanilla.yaml")},
                            "kd": {"config": str(root / "kd.yaml")},
                            "kd-t2": {"config": str(root / "kd.yaml"),
                                      "overrides": ["distill.params.temperature=2"]}}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(protocol))
    return path


def test_bench_runs_collects_tabulates_and_skips_finished(
    tiny_protocol: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, results = tmp_path / "runs", tmp_path / "results"
    args = ["bench", str(tiny_protocol), "--runs-dir", str(runs), "--results-dir", str(results), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # the time left, from the runs trained so far, before each further run (issue 34)
    assert "[bench] 1 of 4 runs trained in" in printed and "min for the 3 left" in printed
    folder = results / "tiny"
    files = sorted(p.name for p in folder.glob("*-s*.json"))
    assert files == ["kd-s0.json", "kd-s1.json", "vanilla-s0.json", "vanilla-s1.json"]
    result = json.loads((folder / "kd-s1.json").read_text())
    assert result["seed"] == 1 and result["method"] == "kd" and result["distill_method"] == "kd"
    assert result["config"]["train"]["seed"] == 1
    # the method's parameters as resolved: the defaults nobody wrote down are in the result too
    assert result["config"]["distill"]["params"] == {}
    assert result["distill"]["params"]["temperature"] == 4.0 and result["distill"]["params"]["ce_weight"] == 0.1
    assert len(result["epochs"]) == 1 and "val_top1" in result["epochs"][0]
    for key in ("last_test_top1", "best_test_top1", "img_per_s", "peak_mem_mb", "wall_s"):
        assert isinstance(result[key], float), key
    assert result["environment"]["torch"] and "git_commit" in result["environment"]
    assert "--seed 1" in result["command"] and result["command"].startswith("lakd distill")
    # Two seeds -> mean ± std in the table; plots are real PNGs.
    table = (folder / "summary.md").read_text()
    assert "| kd | 0,1 | 1 |" in table and "±" in table
    summary = json.loads((folder / "summary.json").read_text())
    kd = next(m for m in summary["methods"] if m["method"] == "kd")
    values = [json.loads((folder / f"kd-s{s}.json").read_text())["best_test_top1"] for s in (0, 1)]
    assert kd["best_test_top1"]["values"] == values
    assert kd["best_test_top1"]["mean"] == pytest.approx(sum(values) / 2)
    for png in ("accuracy_curves.png", "accuracy_vs_speed.png"):
        assert (folder / png).read_bytes()[:8] == PNG_SIGNATURE

    # A second call runs nothing: every result exists.
    stamp = (runs / "tiny" / "kd-s0" / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "kd seed 0: done" in capsys.readouterr().out
    assert (runs / "tiny" / "kd-s0" / "last.pt").stat().st_mtime_ns == stamp

    # An unfinished run (no summary yet, last.pt present) is resumed, not restarted.
    (folder / "kd-s0.json").unlink()
    (runs / "tiny" / "kd-s0" / "summary.json").unlink()
    protocol = load_protocol(str(tiny_protocol))
    planned = {(r.method, r.seed): r for r in plan_runs(protocol, None, None, None, None, runs, results)}
    assert run_state(planned[("kd", 0)]) == "resume"
    assert run_state(planned[("kd", 1)]) == "done"
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "  resume  lakd distill" in dry and dry.count("    done  ") == 3
    assert main(args) == 0
    assert "--resume" in capsys.readouterr().out
    assert (folder / "kd-s0.json").is_file()

    # `lakd report` on one of the runs: table on stdout and a curves PNG.
    assert main(["report", str(runs / "tiny" / "kd-s1")]) == 0
    out = capsys.readouterr().out
    assert "val_top1" in out and "last epoch loss terms: ce" in out and "kd " in out
    assert (runs / "tiny" / "kd-s1" / "curves.png").read_bytes()[:8] == PNG_SIGNATURE


def test_bench_variant_overrides_and_epochs_label(tiny_protocol: Path, tmp_path: Path) -> None:
    protocol = load_protocol(str(tiny_protocol))
    runs = plan_runs(protocol, ["kd-t2"], [3], None, 2, tmp_path / "runs", tmp_path / "results")
    assert len(runs) == 1
    args = runs[0].command(data_root=None, progress=False)
    assert args[-1] == "distill.params.temperature=2" and args[args.index("--epochs") + 1] == "2"
    assert runs[0].run_dir == tmp_path / "runs" / "tiny-e2" / "kd-t2-s3"
    assert runs[0].result_path == tmp_path / "results" / "tiny-e2" / "kd-t2-s3.json"


def test_a_pair_overrides_one_entry_of_a_method_after_its_own_overrides(tiny_protocol: Path, tmp_path: Path) -> None:
    """A published per-pair setting of one entry (kd-ls at another temperature on one pair) reaches that entry's
    runs on that pair only, after the entry's own overrides."""
    spec = yaml.safe_load(tiny_protocol.read_text())
    base = spec["configs"][0]
    spec["pairs"] = {"plain": base, "tuned": {"config": base, "overrides": {"kd-t2": ["distill.params.temperature=3"]}}}
    path = tmp_path / "paired.yaml"
    path.write_text(yaml.safe_dump(spec))
    protocol = load_protocol(str(path))
    runs = {(r.pair, r.method): r.command(data_root=None, progress=False)
            for r in plan_runs(protocol, ["kd", "kd-t2"], [0], None, None, tmp_path / "runs", tmp_path / "res")}
    assert runs["tuned", "kd-t2"][-2:] == ["distill.params.temperature=2", "distill.params.temperature=3"]
    assert runs["plain", "kd-t2"][-1] == "distill.params.temperature=2"
    assert not any("temperature" in a for a in runs["tuned", "kd"] + runs["plain", "kd"])
    spec["pairs"]["tuned"]["overrides"] = {"kd-t3": ["distill.params.temperature=3"]}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(LakdError, match=r"pairs.tuned.overrides names method 'kd-t3'.*did you mean 'kd-t2'"):
        load_protocol(str(path))


def test_shipped_cifar100_strong_pins_the_published_per_pair_settings() -> None:
    """cifar100-strong: 15 epochs; resnet20 at lr 0.1, mobilenetv2 at CRD's lower lr; DKD beta, ReviewKD weight and
    KD + LS temperature per pair; every warm-up at its published share of training (20 of 240 epochs)."""
    from lakd.bench import resolve_path
    from lakd.config import DistillRunConfig, build_config
    from lakd.distill import make_params

    protocol = load_protocol("cifar100-strong")
    assert set(protocol.pairs) == {"resnet56_resnet20", "vgg13_mobilenetv2"}
    expected = {"resnet56_resnet20": ("resnet20", 0.1, 2.0, 0.6, 2.0),  # student, lr, DKD beta, ReviewKD w, KD+LS T
                "vgg13_mobilenetv2": ("mobilenetv2", 0.02, 6.0, 5.0, 3.0)}
    for run in plan_runs(protocol, None, [0], None, None, Path("runs/x"), Path("results/x")):
        args = run.command(data_root=None, progress=False)
        files = [args[i + 1] for i, a in enumerate(args) if a == "-c"]
        overrides = [a for a in args if "=" in a and not a.startswith("-")]
        cfg = build_config(DistillRunConfig, [str(resolve_path(f, protocol.path)) for f in files], overrides, {})
        student, lr, beta, weight, ls_temperature = expected[run.pair]
        assert (cfg.model.name, cfg.optim.lr, cfg.train.epochs, cfg.data.val_size) == (student, lr, 15, 5000)
        params = make_params(cfg.distill.method, cfg.distill.resolved_params())
        if cfg.distill.method in ("dkd", "reviewkd", "nd"):
            assert params.warmup_epochs == 1.25, run.label
        if run.method == "dkd":
            assert params.beta == beta
        if run.method == "reviewkd":
            assert params.reviewkd_weight == weight
        if run.method == "kd-ls":
            assert params.temperature == ls_temperature and params.kd_weight == 9.0 and params.logit_stand
        if run.method == "kd":
            assert params.temperature == 4.0 and not params.logit_stand


def test_lakd_results_made_before_its_core_shrank_still_count(tmp_path: Path) -> None:
    """Results of `lakd` recorded before issue 32 moved logit_stand and the auxiliary heads into lakd-study: at the
    values at which they did nothing they are still what the protocol gives now; at any other value they are not."""
    from lakd.bench import stale_difference

    protocol = load_protocol("cifar10-strong")
    [run] = plan_runs(protocol, ["lakd"], [0], None, None, tmp_path / "runs", tmp_path / "results")
    recorded = json.loads((Path(__file__).resolve().parents[1] /
                           "benchmarks/results/default-question/cifar10-strong/lakd-s5.json").read_text())
    params = recorded["distill"]["params"]
    assert params["aux_weight"] == 0.0 and "logit_stand" in params
    run.result_path.parent.mkdir(parents=True)
    run.result_path.write_text(json.dumps({"distill": {"params": params}}))
    assert stale_difference(run) is None
    run.result_path.write_text(json.dumps({"distill": {"params": {**params, "aux_weight": 0.3}}}))
    assert stale_difference(run) == "aux_weight: 0.3 -> '(absent)'"


@pytest.mark.parametrize(("protocol_file", "results"), [
    ("cifar10-strong", "benchmarks/results"),
    ("cifar10-strong", "benchmarks/results/default-question"),
    ("benchmarks/studies/lakd_local_cifar10_strong.yaml", "benchmarks/studies/results"),
])
def test_every_committed_result_is_still_what_its_entry_gives(protocol_file: str, results: str) -> None:
    """The refactors since the committed comparisons ran left every result counted: what each entry resolves to
    now equals what its result recorded (parameters that moved, at the value at which they do nothing, aside)."""
    from lakd.bench import stale_difference

    root = Path(__file__).resolve().parents[1]
    protocol = load_protocol(str(root / protocol_file) if protocol_file.endswith(".yaml") else protocol_file)
    runs = [r for r in plan_runs(protocol, None, [0, 1, 2, 3, 4, 5], None, None, root / "runs", root / results)
            if r.result_path.is_file()]
    assert len(runs) >= 5
    assert {r.label: stale_difference(r) for r in runs} == {r.label: None for r in runs}


def test_a_result_made_with_other_parameters_stops_the_bench(
    tiny_protocol: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished result whose recorded parameters differ from what its entry gives now (a default changed) is
    not counted as done: the bench says which and what differs, runs nothing and writes nothing."""
    from lakd.distill import make_params, params_as_dict

    runs, results = tmp_path / "runs", tmp_path / "results"
    folder = results / "tiny"
    folder.mkdir(parents=True)
    current = params_as_dict(make_params("kd", {}))
    (folder / "kd-s0.json").write_text(json.dumps({"method": "kd", "seed": 0,
                                                   "distill": {"params": {**current, "temperature": 2.0}}}))
    args = ["bench", str(tiny_protocol), "--methods", "kd", "--seeds", "0", "--runs-dir", str(runs),
            "--results-dir", str(results), "--no-progress"]
    assert main([*args, "--dry-run"]) == 0
    assert "stale" in capsys.readouterr().out
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "kd seed 0" in err and "temperature: 2.0 -> 4.0" in err and "Move each result" in err
    assert not runs.exists() and sorted(p.name for p in folder.iterdir()) == ["kd-s0.json"]
    # recorded and equal -> done (nothing to run); not recorded (older results) -> done as before
    (folder / "kd-s0.json").write_text(json.dumps({"method": "kd", "seed": 0, "distill": {"params": current}}))
    assert main([*args, "--dry-run"]) == 0 and "    done" in capsys.readouterr().out


def test_an_older_result_is_judged_by_its_recorded_config(
    tiny_protocol: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A result written before runs recorded resolved parameters is checked through its recorded config: a preset
    whose settings changed since makes it stale; one kept under a label whose entry reproduces it is done and is
    tabulated under that label (its own "method" records the name it ran under)."""
    from lakd.bench import summarise

    results = tmp_path / "results"
    folder = results / "tiny"
    folder.mkdir(parents=True)
    old = {"method": "kd", "seed": 0, "best_test_top1": 50.0, "last_test_top1": 49.0, "best_val_top1": 51.0,
           "epochs": [{"epoch": 1, "val_top1": 51.0, "test_top1": 49.0}],
           "config": {"distill": {"method": "kd", "params": {"temperature": 2}}}}
    (folder / "kd-s0.json").write_text(json.dumps(old))
    args = ["bench", str(tiny_protocol), "--seeds", "0", "--runs-dir", str(tmp_path / "runs"),
            "--results-dir", str(results), "--no-progress", "--dry-run"]
    assert main([*args, "--methods", "kd"]) == 0
    assert "   stale  " in capsys.readouterr().out  # the kd entry now gives temperature 4
    (folder / "kd-s0.json").rename(folder / "kd-t2-s0.json")
    assert main([*args, "--methods", "kd-t2"]) == 0
    assert "    done  " in capsys.readouterr().out
    assert [m["method"] for m in summarise(folder)["methods"]] == ["kd-t2"]
    old["config"]["distill"]["method"] = "no-such-method"  # what it recorded cannot be read today: stale too
    (folder / "kd-t2-s0.json").write_text(json.dumps(old))
    assert main([*args, "--methods", "kd-t2"]) == 0
    assert "   stale  " in capsys.readouterr().out


def test_bench_bad_input(tiny_protocol: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["bench", str(tiny_protocol), "--methods", "kdd"], "has no method 'kdd' (did you mean 'kd'?)"),
        (["bench", "cifar10-cpux"], "unknown protocol 'cifar10-cpux' (did you mean 'cifar10-cpu'?)"),
        (["bench", str(tiny_protocol), "--seeds", "one"], "--seeds must be integers"),
        (["bench", str(tiny_protocol), "--pairs", "a_b"], "has no teacher/student pairs"),
        (["report", str(tmp_path)], "has no metrics.jsonl"),
    ]
    for argv, message in cases:
        assert main([*argv, "--results-dir", str(tmp_path / "r")] if argv[0] == "bench" else argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmethod: {}\n")
    with pytest.raises(LakdError, match=r"unknown key 'method' \(did you mean 'methods'\?\)"):
        load_protocol(str(bad))


def test_shipped_protocols_load_and_name_existing_configs() -> None:
    for name in ("cifar10-cpu", "cifar100-crd"):
        protocol = load_protocol(name)
        runs = plan_runs(protocol, list(protocol.methods), [0], None, None, Path("runs/x"), Path("results/x"))
        for run in runs:
            run.command(data_root=None, progress=False)  # resolves every config path or raises
    c10 = load_protocol("cifar10-cpu")
    assert {"vanilla", "kd", "fitnet", "at", "dkd", "reviewkd", "lakd"} <= set(c10.default_methods)
    assert "distill.params.warmup_epochs=0.5" in c10.methods["dkd"].overrides
    assert len(load_protocol("cifar100-crd").pairs) == 11


def test_every_shipped_protocol_and_study_loads() -> None:
    root = Path(__file__).resolve().parents[1]
    studies = [f for f in (root / "benchmarks/studies").glob("*.yaml") if "methods" in yaml.safe_load(f.read_text())]
    files = [*(root / "configs/protocols").glob("*.yaml"), *studies]  # (the other study files are base configs)
    assert len(files) > 5
    from lakd.bench import resolve_path
    from lakd.config import DistillRunConfig, build_config
    from lakd.distill import make_params

    for file in files:
        protocol = load_protocol(str(file))
        for entry in protocol.methods.values():  # every entry resolves to valid parameters of its method
            for pair in list(protocol.pairs) or [None]:
                configs = [*protocol.configs, *([protocol.pairs[pair]] if pair else []), entry.config]
                pair_overrides = protocol.pair_overrides.get(pair, {}).get(entry.name, []) if pair else []
                cfg = build_config(DistillRunConfig, [str(resolve_path(c, protocol.path)) for c in configs],
                                   entry.overrides + pair_overrides, {})
                make_params(cfg.distill.method, cfg.distill.resolved_params())  # raises, naming the key


@pytest.mark.parametrize("body, message", [
    ("configs: 5\nmethods: {a: {config: c.yaml}}", "'configs' must be a list of strings"),
    ("methods: [kd]", "'methods' must be a mapping"),
    ("methods: {a: {config: c.yaml, overrides: x=1}}", "'methods.a.overrides' must be a list of strings"),
    ("methods: {a: {config: c.yaml, extra: 1}}", "nothing else"),
    ("methods: {a: {config: c.yaml}}\nseeds: [zero]", "'seeds' must be a list of integers"),
    ("methods: {a: {config: c.yaml}}\nseeds: []", "'seeds' must be a list of integers"),
    ("methods: {a: {config: c.yaml}}\npairs: 3", "'pairs' must be a mapping"),
    ("methods: {a: {config: c.yaml}}\nname: [1, 2]", "'name' must be a string"),
    ("methods: {../../../escape: {config: c.yaml}}", "method name '../../../escape' must be letters"),
    ("methods: {a/b: {config: c.yaml}}", "method name 'a/b' must be letters"),
    ("methods: {a: {config: c.yaml}}\npairs: {../up: p.yaml}", "pair name '../up' must be letters"),
    ("methods: {7: {config: c.yaml}}", "method name 7 must be letters"),
    ("methods: {a: {config: c.yaml}}\nseeds: [0]\n\xff", "not readable YAML"),
])
def test_protocols_of_the_wrong_shape_get_one_clear_error(body: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(body.encode("latin-1"))
    with pytest.raises(LakdError, match=re.escape(message)):
        load_protocol(str(path))


def test_a_full_disk_at_every_write_of_bench(tiny_protocol: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """bench's own writes (the result JSON, the tables, the plots) failing in turn: one error line, exit 2, no
    temp file, and the results already there untouched (its runs' writes are lakd distill's, tested apart)."""
    import errno
    import os
    import stat

    import lakd.atomic

    runs, results = tmp_path / "runs", tmp_path / "results"
    args = ["bench", str(tiny_protocol), "--runs-dir", str(runs), "--results-dir", str(results), "--no-progress",
            "--methods", "vanilla", "--seeds", "0"]
    assert main(args) == 0
    folder = results / "tiny"
    kept = (folder / "vanilla-s0.json").read_bytes()
    real_fsync = os.fsync
    for n in range(1, 5):  # summary.md, summary.json, two plots: what a call with every run finished writes
        count = {"n": 0}

        def fsync(fd: int, count: dict = count, n: int = n) -> None:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                count["n"] += 1
                if count["n"] == n:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        with monkeypatch.context() as m:
            m.setattr(lakd.atomic.os, "fsync", fsync)
            rc = main(args)
        err = capsys.readouterr().err
        assert rc == 2 and "No space left on device" in err and "Traceback" not in err, (n, err)
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
        assert (folder / "vanilla-s0.json").read_bytes() == kept
