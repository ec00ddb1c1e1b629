"""One KD epoch with torchdistill's own machinery, timed like lakd's ``img_per_s``; run in the peer venv.

    benchmarks/.venv-torchdistill/bin/python benchmarks/torchdistill/run_kd.py [--teacher-mode train|eval]
        [--steps N] [--workers 2] [--data-root ../shared/data] [--out result.json]

What it does is torchdistill's examples/torchvision/image_classification.py, cut to the training epoch:
the YAML (kd_cifar10_resnet56_resnet20.yaml, read with torchdistill's yaml_util, which builds the dataset and
transforms) -> models from torchdistill's registry (``get_image_classification_model`` / ``get_model``) ->
``get_distillation_box`` (its data loader, SGD, scheduler, KDLoss) -> ``pre_epoch_process`` -> the example's
``train_one_epoch`` loop (``MetricLogger.log_every`` over the box's loader, ``forward_process``,
``post_forward_process`` = backward + optimizer step + scheduler step, ``loss.item()`` and the NaN check). The
end-of-epoch validation, checkpoint saving and test are left out (untimed in lakd's number too).

``--teacher-mode train`` is the example's behaviour: nothing in torchdistill 1.1.5 puts the teacher in eval mode
(its default pre-epoch process only calls ``student_model.train()``, and a fresh module is in train mode), so the
frozen teacher runs with batch-statistics BatchNorm and keeps updating its running stats. ``eval`` picks our
registered pre-epoch process that adds ``teacher.eval()``.

Timing: from the start of the loader iteration to the end of the last optimizer step, every step counted (no
warm-up excluded), as lakd's trainer does; DataLoader worker start-up is inside it, as in the example's epoch.
The result (JSON) goes to ``--out`` and stdout's last line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))  # glue_lakd + td_lakd_glue (imported by the YAML's !import_call)

import torch  # noqa: E402
from torchdistill.common import yaml_util  # noqa: E402
from torchdistill.common.main_util import import_dependencies, load_ckpt, set_seed  # noqa: E402
from torchdistill.core.distillation import get_distillation_box  # noqa: E402
from torchdistill.misc.log import MetricLogger, SmoothedValue, set_basic_log_config  # noqa: E402
from torchdistill.models.official import get_image_classification_model  # noqa: E402
from torchdistill.models.registry import get_model  # noqa: E402

DEFAULT_CONFIG = HERE / "kd_cifar10_resnet56_resnet20.yaml"
DEFAULT_TEACHER = REPO / "benchmarks" / "teachers" / "cifar10_resnet56_e8.pt"


def load_model(model_config: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """As the example's ``load_model``: torchvision's zoo first, else torchdistill's registry; then src_ckpt."""
    model = get_image_classification_model(model_config, False)
    if model is None:
        model = get_model(model_config["key"], model_config.get("repo_or_dir", None), **model_config["kwargs"])
    load_ckpt(model_config.get("src_ckpt", None), model=model, strict=True)
    return model.to(device)


def convert_teacher(teacher_path: Path, dst: Path) -> dict[str, Any]:
    """Write lakd's teacher checkpoint as a torchdistill ResNet4Cifar checkpoint ``{'model': state_dict}``."""
    from glue_lakd import lakd_to_torchdistill_resnet

    ckpt = torch.load(teacher_path, map_location="cpu", weights_only=True)
    torch.save({"model": lakd_to_torchdistill_resnet(ckpt["model"])}, dst)
    return ckpt["meta"]


def check_teacher(teacher: torch.nn.Module, teacher_path: Path, meta: dict[str, Any]) -> float:
    """Max |logit difference| between the converted teacher and lakd's own model, eval mode, 8 random images."""
    from lakd.engine import load_checkpoint
    from lakd.models import build_model

    ref = build_model(meta["arch"], meta["num_classes"])
    ref.load_state_dict(load_checkpoint(teacher_path)["model"])
    was_training = teacher.training
    ref.eval()
    teacher.eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ref(x)
        ref_logits = out[0] if isinstance(out, tuple) else out
        diff = float((teacher(x) - ref_logits).abs().max())
    teacher.train(was_training)
    return diff


def train_one_epoch(box: Any, device: torch.device, log_freq: int, steps: int | None) -> dict[str, Any]:
    """The example's ``train_one_epoch``, with a step cut and a wall clock around the whole loop."""
    metric_logger = MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value}"))
    metric_logger.add_meter("img/s", SmoothedValue(window_size=10, fmt="{value}"))
    total = len(box.train_data_loader) if steps is None else min(steps, len(box.train_data_loader))
    images = done = 0
    loss_sum = 0.0
    teacher_training: bool | None = None
    start = time.perf_counter()
    for sample_batch, targets, supp_dict in metric_logger.log_every(box.train_data_loader, log_freq, "Epoch: [0]"):
        step_start = time.time()
        sample_batch, targets = sample_batch.to(device), targets.to(device)
        loss = box.forward_process(sample_batch, targets, supp_dict)
        box.post_forward_process(loss=loss)
        batch_size = sample_batch.shape[0]
        value = loss.item()
        metric_logger.update(loss=value, lr=box.optimizer.param_groups[0]["lr"])
        metric_logger.meters["img/s"].update(batch_size / (time.time() - step_start))
        if not math.isfinite(value):
            raise ValueError(f"The training loop was broken due to loss = {value}")
        if teacher_training is None:  # the mode the teacher actually ran in (after pre_epoch_process)
            teacher_training = bool(box.teacher_model.training)
        loss_sum += value
        images += batch_size
        done += 1
        if done >= total:
            break
    elapsed = time.perf_counter() - start
    return {"img_per_s": images / max(elapsed, 1e-9), "steps": done, "images": images, "train_s": elapsed,
            "train_loss": loss_sum / max(done, 1), "teacher_training": teacher_training}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER, help="lakd teacher checkpoint")
    parser.add_argument("--teacher-mode", choices=("train", "eval"), default="train",
                        help="train: as torchdistill's example leaves it (default); eval: teacher.eval() per epoch")
    parser.add_argument("--data-root", type=Path, default=None, help="default: $LAKD_DATA, else ../shared/data")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader num_workers (the samples use 16)")
    parser.add_argument("--steps", type=int, default=None, help="stop after N steps (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here too")
    args = parser.parse_args(argv)

    set_basic_log_config()
    set_seed(args.seed)
    data_root = args.data_root or (Path(os.environ["LAKD_DATA"]) if os.environ.get("LAKD_DATA")
                                   else REPO.parent / "shared" / "data")
    os.environ["LAKD_DATA"] = str(data_root.resolve())  # the YAML's dataset has root: null -> lakd reads this
    load_start = time.perf_counter()
    config = yaml_util.load_yaml_file(str(args.config))  # builds the dataset + transforms (!import_call)
    import_dependencies(config.get("dependencies", None))
    device = torch.device("cpu")
    train_config = config["train"]
    loader_kwargs = train_config["train_data_loader"]["kwargs"]
    loader_kwargs["num_workers"] = args.workers
    dataset = config["datasets"][train_config["train_data_loader"]["dataset_id"]]
    steps_per_epoch = len(dataset) // loader_kwargs["batch_size"] if loader_kwargs.get("drop_last") \
        else -(-len(dataset) // loader_kwargs["batch_size"])
    train_config["scheduler"]["kwargs"]["T_max"] = steps_per_epoch
    if args.teacher_mode == "eval":
        train_config["pre_epoch_process"] = "teacher_eval_pre_epoch_process"

    with tempfile.TemporaryDirectory(prefix="td-teacher-") as tmp:
        models_config = config["models"]
        teacher_config, student_config = models_config["teacher_model"], models_config["student_model"]
        converted = Path(tmp) / "teacher.pt"
        meta = convert_teacher(args.teacher, converted)
        teacher_config["src_ckpt"] = str(converted)
        teacher = load_model(teacher_config, device)
        teacher_diff = check_teacher(teacher, args.teacher, meta)
        student = load_model(student_config, device)
    box = get_distillation_box(teacher, student, config["datasets"], train_config, device, None, False, 1)
    load_s = time.perf_counter() - load_start
    box.pre_epoch_process(epoch=0)
    result = train_one_epoch(box, device, train_config["log_freq"], args.steps)
    box.clean_modules()

    teacher_training = result.pop("teacher_training")
    result.update({
        "what": f"torchdistill {version('torchdistill')} DistillationBox (its KDLoss, SGD, scheduler, DataLoader), "
                f"teacher in {'train' if teacher_training else 'eval'} mode",
        "precision": "fp32", "memory_format": "contiguous (NCHW)", "torch_threads": torch.get_num_threads(),
        "num_workers": args.workers, "teacher_mode": "train" if teacher_training else "eval",
        "teacher_mode_requested": args.teacher_mode, "steps_per_epoch": steps_per_epoch,
        "train_images": len(dataset), "batch_size": loader_kwargs["batch_size"],
        "teacher_weights": f"{args.teacher.name} converted to torchdistill resnet56 (renamed keys)",
        "teacher_max_abs_logit_diff_vs_lakd": teacher_diff, "setup_s": load_s, "seed": args.seed,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "torchvision": version("torchvision"), "torchdistill": version("torchdistill"),
                     "numpy": version("numpy"), "pillow": version("pillow")},
        "config": str(args.config.resolve().relative_to(REPO)) if args.config.resolve().is_relative_to(REPO)
        else str(args.config),
    })
    text = json.dumps(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
