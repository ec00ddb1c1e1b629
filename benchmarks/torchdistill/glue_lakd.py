"""lakd's side of the torchdistill glue (no torchdistill import, so lakd's own tests can load it).

* ``LakdCIFAR``: a map-style dataset over the *same* arrays lakd trains on (``lakd.data.load_splits``: the 45,000
  training images left after lakd's 5,000-image validation carve, or that validation split, or test). It behaves
  like ``torchvision.datasets.CIFAR10``, which torchdistill's CIFAR configs use: ``__getitem__`` turns one uint8
  HWC array into a PIL image and runs the torchvision ``transform`` built by the YAML, then returns
  ``(image, target)``. Only the storage differs (our JPEG npz copy, decoded once, instead of the pickled batches).
* ``lakd_to_torchdistill_resnet``: renames a lakd CIFAR ResNet state_dict (``stem.* / stages.i.j.* /
  head.fc.*``) to torchdistill's ``ResNet4Cifar`` names (``conv1 / bn1 / layer{i+1}.j.* / fc.*``). Both are the
  same network: conv3x3 stem, BasicBlocks, option-B shortcuts (strided 1x1 conv + BN), global average pool, fc.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lakd.data import load_splits


class LakdCIFAR(Dataset):
    """CIFAR-10/100 from lakd's loader, served one PIL image at a time like ``torchvision.datasets.CIFAR10``.

    ``root=None`` lets lakd pick the data root ($LAKD_DATA, as ``lakd distill`` does). ``split`` is ``train``
    (after the validation carve), ``val`` or ``test``.
    """

    def __init__(self, name: str = "cifar10", root: str | None = None, split: str = "train", val_size: int = 5000,
                 split_seed: int = 0, transform: Callable[[Image.Image], Any] | None = None,
                 target_transform: Callable[[int], Any] | None = None) -> None:
        splits = load_splits(name, Path(root).expanduser() if root else None, val_size=val_size,
                             split_seed=split_seed)
        part = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
        if part is None:
            raise ValueError(f"split '{split}' is empty (val_size={val_size})")
        self.data: np.ndarray = part.x
        self.targets: list[int] = [int(v) for v in part.y]
        self.classes = list(part.classes)
        self.transform, self.target_transform = transform, target_transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img, target = Image.fromarray(self.data[index]), self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def lakd_to_torchdistill_resnet(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """lakd CIFAR ResNet (option B) state_dict -> torchdistill ``ResNet4Cifar`` state_dict (same tensors)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "stem":  # stem.0 = conv, stem.1 = BN
            new = {"0": "conv1", "1": "bn1"}[parts[1]] + "." + ".".join(parts[2:])
        elif parts[0] == "stages":  # stages.<stage>.<block>.<rest>, shortcut.0/1 = downsample.0/1
            rest = ".".join(parts[3:]).replace("shortcut.", "downsample.")
            new = f"layer{int(parts[1]) + 1}.{parts[2]}.{rest}"
        elif parts[:2] == ["head", "fc"]:
            new = "fc." + ".".join(parts[2:])
        else:
            raise KeyError(f"unexpected key '{key}' in a lakd CIFAR ResNet state_dict")
        out[new] = value
    return out
