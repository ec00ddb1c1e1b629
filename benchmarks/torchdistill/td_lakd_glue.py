"""torchdistill's side of the glue for benchmarks/torchdistill/run_kd.py (peer venv only).

Importing it (the YAML's ``!import_call`` of ``td_lakd_glue.LakdCIFAR`` does) registers
``teacher_eval_pre_epoch_process`` in torchdistill's pre-epoch registry: torchdistill's default pre-epoch process,
then ``teacher.eval()``; chosen by ``train.pre_epoch_process`` (run_kd.py ``--teacher-mode eval``). ``LakdCIFAR``
and the teacher conversion live in glue_lakd.py. Nothing here is torchdistill's code; it only calls torchdistill's
public registry and default process.
"""

from __future__ import annotations

from typing import Any

from glue_lakd import LakdCIFAR, lakd_to_torchdistill_resnet
from torchdistill.core.interfaces.pre_epoch_proc import default_pre_epoch_process_with_teacher
from torchdistill.core.interfaces.registry import register_pre_epoch_proc_func

__all__ = ["LakdCIFAR", "lakd_to_torchdistill_resnet", "teacher_eval_pre_epoch_process"]


@register_pre_epoch_proc_func(key="teacher_eval_pre_epoch_process")
def teacher_eval_pre_epoch_process(self: Any, epoch: int | None = None, **kwargs: Any) -> None:
    """torchdistill's default pre-epoch process (student.train(), clear I/O dicts), then ``teacher.eval()``."""
    default_pre_epoch_process_with_teacher(self, epoch=epoch, **kwargs)
    self.teacher_model.eval()
