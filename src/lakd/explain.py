"""``lakd explain``: where do teacher and student look? NDAM maps side by side, one PNG, plus numbers.

For a few test images, each student module's output (a "module" = the end of one of LAKD's local modules with
``split = 'stage'``) is paired with the teacher stage LAKD would distil it from, and both NDAM maps
(``mean_c |F_c|^p``, see distill/ndam.py) are drawn next to the input. A second student (``before``, e.g. the same
architecture trained without distillation) adds a third map per module, so the effect of distillation is
visible. The per-module number is the cosine similarity of student and teacher maps on their common grid,
averaged over the images: in [0, 1] because the maps are non-negative, 1 = the same spatial pattern.

The figure layout is computed in pixels (``grid_size``) so the PNG size is known in advance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lakd.atomic import atomic_write
from lakd.distill.lakd import module_pieces
from lakd.distill.ndam import ndam_map, similarity
from lakd.errors import LakdError
from lakd.models.base import StagedModel

DPI = 128  # a power of two: pixel / DPI is exact in floating point, so the saved PNG has exactly grid_size pixels
CELL_PX = 128
COLORMAP = "inferno"

__all__ = ["ExplainInputs", "explain", "grid_size", "load_explain_inputs", "teacher_stage_for"]


# -- geometry ----------------------------------------------------------------------------------------------
def _spacing(cell_px: int) -> tuple[int, int, int]:
    """(pad between cells, extra gap before each module's group, header band for titles), in pixels."""
    pad = max(2, cell_px // 16)
    return pad, 2 * pad, (3 * cell_px) // 4


def _columns(n_modules: int, with_before: bool) -> int:
    return 1 + n_modules * (3 if with_before else 2)


def grid_size(n_images: int, n_modules: int, with_before: bool, cell_px: int = CELL_PX) -> tuple[int, int]:
    """(width, height) in pixels of the PNG that ``explain`` writes: tests and callers can rely on it."""
    if n_images < 1 or n_modules < 1 or cell_px < 16:
        raise ValueError(f"grid_size needs n_images >= 1, n_modules >= 1, cell_px >= 16; "
                         f"got {n_images}, {n_modules}, {cell_px}")
    pad, gap, header = _spacing(cell_px)
    cols = _columns(n_modules, with_before)
    width = pad + cols * cell_px + (cols - 1) * pad + n_modules * gap + pad
    height = header + n_images * cell_px + (n_images - 1) * pad + pad
    return width, height


def _cell_origin(row: int, col: int, n_per_module: int, cell_px: int) -> tuple[int, int]:
    """Top-left pixel of cell (row, col); column 0 is the input, then groups of ``n_per_module`` map columns."""
    pad, gap, header = _spacing(cell_px)
    groups = 0 if col == 0 else 1 + (col - 1) // n_per_module
    x = pad + col * (cell_px + pad) + groups * gap
    y = header + row * (cell_px + pad)
    return x, y


# -- maps and numbers --------------------------------------------------------------------------------------
def teacher_stage_for(module: int, n_modules: int, n_teacher_stages: int) -> int:
    """The teacher stage LAKD distils student module ``module`` from: the one at the same relative depth."""
    return min(n_teacher_stages - 1, math.ceil((module + 1) * n_teacher_stages / n_modules) - 1)


def _as_unit_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) or float in [0, 1] (N, H, W, 3) -> float32 (N, H, W, 3) in [0, 1], on the CPU."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if x.ndim != 4 or x.shape[-1] != 3:
        raise LakdError(f"explain: images must be (N, H, W, 3) RGB, got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise LakdError("explain: no images to explain (N = 0); pass at least one image")
    if x.dtype == torch.uint8:
        return x.detach().cpu().float() / 255.0
    if not x.is_floating_point():
        raise LakdError(f"explain: images must be uint8 (0..255) or float (0..1), got dtype {x.dtype}")
    return x.detach().cpu().float().clamp(0.0, 1.0)


def _module_ends(model: StagedModel) -> list[int]:
    """Index of the stage that ends each of the model's LAKD modules (split 'stage')."""
    pieces = module_pieces(model, getattr(model, "arch_name", None))
    return [module[-1][0] for module in pieces]


@torch.no_grad()
def _features(model: StagedModel, x: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """(class count, per-stage features) of ``model`` in eval mode; its train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype if param.is_floating_point() else x.dtype)
        logits, feats = model(x)
    finally:
        model.train(was_training)
    return int(logits.shape[1]), [f.float().cpu() for f in feats]


def _display_map(feat: torch.Tensor, size: tuple[int, int], p: float) -> np.ndarray:
    """NDAM map upsampled (bilinear) to the image size and scaled to [0, 1] per image, for the colormap."""
    m = F.interpolate(ndam_map(feat, p)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    m = m / m.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return m.clamp(0.0, 1.0).numpy()


# -- the command -------------------------------------------------------------------------------------------
def explain(
    teacher: StagedModel,
    student: StagedModel,
    images: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    out_path: str | Path,
    before: StagedModel | None = None,
    p: float = 2.0,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    cell_px: int = CELL_PX,
) -> dict[str, Any]:
    """Draw teacher / student (/ before) NDAM maps per student module for ``images``; write PNG + JSON.

    ``images`` are RGB (N, H, W, 3), uint8 or float in [0, 1]; ``mean``/``std`` (per channel, [0, 1] units)
    normalise them for all models. Returns the numbers also written to ``out_path`` with a ``.json`` suffix.
    """
    out_path = Path(out_path)
    if p <= 0:
        raise LakdError(f"explain: p = {p} must be > 0 (the NDAM exponent; 2 is the default)")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise LakdError(f"explain: mean and std need 3 values (RGB) with std > 0, got mean={mean!r} std={std!r}")
    unit = _as_unit_images(images)
    n = unit.shape[0]
    if labels is not None and len(labels) != n:
        raise LakdError(f"explain: {len(labels)} labels for {n} images; give one label per image or none")
    m = torch.tensor(list(mean), dtype=torch.float32)
    s = torch.tensor(list(std), dtype=torch.float32)
    x = ((unit - m) / s).permute(0, 3, 1, 2).contiguous()

    t_classes, t_feats = _features(teacher, x)
    s_classes, s_feats = _features(student, x)
    if s_classes != t_classes:
        raise LakdError(f"explain: the teacher predicts {t_classes} classes but the student {s_classes}; "
                        "give a teacher and a student trained on the same dataset")
    ends = _module_ends(student)
    b_feats: list[torch.Tensor] | None = None
    b_ends: list[int] = []
    if before is not None:
        b_classes, b_feats = _features(before, x)
        b_ends = _module_ends(before)
        if b_classes != s_classes:
            raise LakdError(f"explain: the 'before' student predicts {b_classes} classes but the student "
                            f"{s_classes}; give two checkpoints of the same student on the same dataset")
        if len(b_ends) != len(ends):
            raise LakdError(f"explain: the 'before' student has {len(b_ends)} modules but the student "
                            f"{len(ends)}; give a 'before' checkpoint of the same student architecture")

    size = (unit.shape[1], unit.shape[2])
    modules: list[dict[str, Any]] = []
    maps: list[list[np.ndarray]] = []  # per module: teacher, student (, before) display maps
    per_image: list[list[np.ndarray]] = []  # per module: student (, before) similarity per image
    for k, end in enumerate(ends):
        j = teacher_stage_for(k, len(ends), len(t_feats))
        sim = similarity(s_feats[end], t_feats[j], p).numpy()
        entry: dict[str, Any] = {"module": k, "student_stage": end, "teacher_stage": j,
                                 "similarity": float(sim.mean()), "similarity_before": None,
                                 "similarity_per_image": [float(v) for v in sim]}
        cols = [_display_map(t_feats[j], size, p), _display_map(s_feats[end], size, p)]
        sims = [sim]
        if b_feats is not None:
            sim_b = similarity(b_feats[b_ends[k]], t_feats[j], p).numpy()
            entry["similarity_before"] = float(sim_b.mean())
            entry["similarity_before_per_image"] = [float(v) for v in sim_b]
            cols.append(_display_map(b_feats[b_ends[k]], size, p))
            sims.append(sim_b)
        modules.append(entry)
        maps.append(cols)
        per_image.append(sims)

    _draw(out_path, unit.numpy(), maps, per_image, modules, labels, title, cell_px)
    result = {"path": str(out_path), "modules": modules, "images": n, "p": p,
              "teacher": getattr(teacher, "arch_name", None), "student": getattr(student, "arch_name", None),
              "before": getattr(before, "arch_name", None) if before is not None else None}
    text = json.dumps(result, indent=2).encode()
    atomic_write(out_path.with_suffix(".json"), lambda f: f.write(text))
    return result


def _resize(cells: np.ndarray, cell_px: int, mode: str) -> np.ndarray:
    """(N, H, W[, C]) float array -> (N, cell_px, cell_px[, C]) with torch's interpolation."""
    t = torch.from_numpy(np.ascontiguousarray(cells, dtype=np.float32))
    t = t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    t = F.interpolate(t, size=(cell_px, cell_px), mode=mode, **kwargs)
    return (t[:, 0] if t.shape[1] == 1 else t.permute(0, 2, 3, 1)).clamp(0.0, 1.0).numpy()


def _draw(
    out_path: Path,
    images: np.ndarray,
    maps: list[list[np.ndarray]],
    per_image: list[list[np.ndarray]],
    modules: list[dict[str, Any]],
    labels: Sequence[str] | None,
    title: str | None,
    cell_px: int,
) -> None:
    """Paste all cells into one RGB canvas at fixed pixel positions, add the text, save the PNG.

    One ``figimage`` instead of an Axes per cell: pixel-exact and fast. ``Figure`` + Agg canvas, so no pyplot
    (global) state is touched.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = images.shape[0]
    per_module = len(maps[0])
    width, height = grid_size(n, len(maps), per_module == 3, cell_px)
    canvas = np.ones((height, width, 3), dtype=np.float32)
    cmap = colormaps[COLORMAP]
    columns = [_resize(images, cell_px, "nearest")]
    columns += [cmap(_resize(m, cell_px, "bilinear"))[..., :3] for cols in maps for m in cols]
    for col, cells in enumerate(columns):
        for row in range(n):
            x, y = _cell_origin(row, col, per_module, cell_px)
            canvas[y:y + cell_px, x:x + cell_px] = cells[row]

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.figimage(canvas, xo=0, yo=0, origin="upper")
    font = max(4.0, 7.0 * cell_px / CELL_PX)
    margin = max(2, cell_px // 32)
    tag = {"color": "white", "fontsize": font * 0.9,
           "bbox": {"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0}}

    def put(x: float, y: float, text: str, **kwargs: Any) -> None:  # (x, y) in pixels from the top left
        fig.text(x / width, 1 - y / height, text, **kwargs)

    if title:
        put(width / 2, cell_px // 8, title, ha="center", va="center", fontsize=font * 1.2)
    heads = ["input"]
    for k in range(len(maps)):
        heads.append(f"teacher\nstage {modules[k]['teacher_stage']}")
        heads.append(f"student m{k}\nsim {modules[k]['similarity']:.2f}")
        if per_module == 3:
            heads.append(f"before m{k}\nsim {modules[k]['similarity_before']:.2f}")
    for col, head in enumerate(heads):
        x, y = _cell_origin(0, col, per_module, cell_px)
        put(x + cell_px / 2, y - margin, head, ha="center", va="bottom", fontsize=font, linespacing=1.1)
    for row in range(n):
        if labels is not None:
            x, y = _cell_origin(row, 0, per_module, cell_px)
            put(x + margin, y + margin, str(labels[row]), ha="left", va="top", **tag)
        for k, sims in enumerate(per_image):
            for c, sim in enumerate(sims, start=1):
                x, y = _cell_origin(row, 1 + k * per_module + c, per_module, cell_px)
                put(x + margin, y + cell_px - margin, f"{sim[row]:.2f}", ha="left", va="bottom", **tag)
    atomic_write(out_path, lambda f: fig.savefig(f, format="png", dpi=DPI))


# -- loading from checkpoints ------------------------------------------------------------------------------
@dataclass
class ExplainInputs:
    """Everything ``explain`` needs, rebuilt from checkpoints and the dataset they were trained on."""

    teacher: StagedModel
    student: StagedModel
    before: StagedModel | None
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str
    title: str


def _load_model(path: str | Path, what: str) -> tuple[StagedModel, dict[str, Any]]:
    """Rebuild ``meta['arch']`` from a lakd checkpoint and load its weights, in eval mode."""
    from lakd.checkpoint import checkpoint_meta, load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(path)
    meta = checkpoint_meta(ckpt, path)
    model = model_from_checkpoint(ckpt, meta, f"{what} checkpoint '{path}'")
    return model.eval(), meta  # type: ignore[return-value]


def load_explain_inputs(
    teacher_ckpt: str | Path,
    student_ckpt: str | Path,
    before_ckpt: str | Path | None = None,
    data_root: str | Path | None = None,
    num_images: int = 8,
    seed: int | None = None,
    dataset: str | None = None,
    data_path: str | None = None,
) -> ExplainInputs:
    """Load the models and ``num_images`` test images (the first ones, or a pick seeded by ``seed``).

    The data and normalisation are the student's (``meta['data']``, as ``lakd eval``: checked by the config
    schema; a recorded folder is read only as ``data_path``); ``dataset`` overrides it.
    """
    from lakd.data import as_arrays, load_splits

    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise LakdError(f"explain: number of images must be >= 1, got {num_images!r}")
    student, s_meta = _load_model(student_ckpt, "student")
    teacher, t_meta = _load_model(teacher_ckpt, "teacher")
    if t_meta["num_classes"] != s_meta["num_classes"]:
        raise LakdError(f"teacher '{teacher_ckpt}' predicts {t_meta['num_classes']} classes but student "
                        f"'{student_ckpt}' {s_meta['num_classes']}: give checkpoints trained on the same dataset")
    if t_meta.get("dataset") and s_meta.get("dataset") and t_meta["dataset"] != s_meta["dataset"]:
        raise LakdError(f"teacher '{teacher_ckpt}' was trained on '{t_meta['dataset']}' but student "
                        f"'{student_ckpt}' on '{s_meta['dataset']}': give checkpoints of the same dataset")
    before = None
    b_meta: dict[str, Any] = {}
    if before_ckpt is not None:
        before, b_meta = _load_model(before_ckpt, "before")
        if b_meta["arch"] != s_meta["arch"] or b_meta["num_classes"] != s_meta["num_classes"]:
            raise LakdError(f"'before' checkpoint '{before_ckpt}' is {b_meta['arch']} with "
                            f"{b_meta['num_classes']} classes but the student '{student_ckpt}' is {s_meta['arch']} "
                            f"with {s_meta['num_classes']}: before/after needs two checkpoints of the same student")

    from lakd.run import data_to_read

    name, data = data_to_read(s_meta, str(student_ckpt), dataset, data_path)
    data["val_size"] = 0  # the test split does not depend on the validation carve-out
    splits = load_splits(name, data_root, **data)
    if splits.num_classes != s_meta["num_classes"]:
        raise LakdError(f"student '{student_ckpt}' predicts {s_meta['num_classes']} classes but dataset "
                        f"'{name}' has {splits.num_classes}: pick the dataset the models were trained on")
    test = splits.test
    if num_images > len(test):
        raise LakdError(f"explain: {num_images} images asked for but the '{name}' test split has {len(test)}; "
                        f"ask for at most {len(test)}")
    if seed is None:
        index = np.arange(num_images)
    else:
        index = np.sort(np.random.default_rng(seed).choice(len(test), size=num_images, replace=False))
    picked = as_arrays(test.subset(index))  # a streamed split: decode just these (evaluation transform)
    labels = [test.classes[int(c)] if int(c) < len(test.classes) else str(int(c)) for c in picked.y]

    method = (s_meta.get("distill") or {}).get("method")
    title = f"{name}: teacher {t_meta['arch']} / student {s_meta['arch']}" + (f" ({method})" if method else "")
    if before is not None:
        b_method = (b_meta.get("distill") or {}).get("method") or "no distillation"
        title += f" / before: {b_method}"
    mean, std = tuple(s_meta.get("mean", splits.mean)), tuple(s_meta.get("std", splits.std))
    if t_meta.get("mean") and t_meta.get("std"):  # a teacher trained with another normalisation sees its own
        from lakd.models.base import feed_with_normalisation

        feed_with_normalisation(teacher, mean, std, tuple(t_meta["mean"]), tuple(t_meta["std"]))
    return ExplainInputs(teacher, student, before, picked.x, labels, mean, std, name, title)


def explain_checkpoints(
    teacher: str | Path,
    student: str | Path,
    before: str | Path | None = None,
    images: int = 4,
    data_root: str | Path | None = None,
    out: str | Path | None = None,
    seed: int | None = 0,
    data_path: str | None = None,
) -> dict[str, Any]:
    """``lakd explain``: load checkpoints and test images, write the grid (default: ndam.png beside the student).

    ``seed`` picks the test images at random (reproducibly; test sets are often sorted by class); None = the first.
    """
    inputs = load_explain_inputs(teacher, student, before, data_root=data_root, num_images=images, seed=seed,
                                 data_path=data_path)
    out_path = Path(out) if out else Path(student).parent / "ndam.png"
    return explain(inputs.teacher, inputs.student, inputs.images, inputs.mean, inputs.std, out_path,
                   before=inputs.before, labels=inputs.labels, title=inputs.title)
