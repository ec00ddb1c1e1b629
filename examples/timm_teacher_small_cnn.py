"""Distil your own small CNN from a timm teacher with LAKD's local modules, in a plain PyTorch loop.

    python examples/timm_teacher_small_cnn.py --data DIR --teacher resnet50 --teacher-weights resnet50.safetensors

The student is an ordinary nn.Module: lakd reads its stages from the module paths given (forward hooks; its
code is untouched). With ``detach_until=1.0`` the three stages train as gradient-isolated local modules, each
module's loss backpropagated as soon as that module has run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn
from torchvision import transforms

import lakd


def conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(conv_bn(3, 32, 2), conv_bn(32, 32, 1))
        self.stage2 = nn.Sequential(conv_bn(32, 64, 2), conv_bn(64, 64, 1))
        self.stage3 = nn.Sequential(conv_bn(64, 128, 2), conv_bn(128, 128, 1))
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(x.mean((2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="ImageFolder root (one sub-folder per class)")
    parser.add_argument("--teacher", default="resnet50", help="a timm model name")
    parser.add_argument("--teacher-weights", type=Path, help="its state_dict (.safetensors or .pth)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("runs/example-timm"))
    parser.add_argument("--smoke", action="store_true", help="a few steps on generated images (for tests)")
    args = parser.parse_args()
    if args.smoke:
        from _smoke_data import make_image_folder

        args.data = make_image_folder(Path(tempfile.mkdtemp()) / "images")
        args.teacher, args.epochs, args.size = "resnet18", 1, 32
    if args.data is None:
        parser.error("--data DIR is required (or --smoke)")

    data = torchvision.datasets.ImageFolder(args.data, transforms.Compose([
        transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]))
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, drop_last=True)
    classes = len(data.classes)

    teacher = timm.create_model(args.teacher, num_classes=classes)  # stages from its own feature_info
    if args.teacher_weights:
        if args.teacher_weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(args.teacher_weights))
        else:
            state = torch.load(args.teacher_weights, map_location="cpu", weights_only=True)
        teacher.load_state_dict(state)
    student = SmallCNN(classes)
    distiller = lakd.distiller("lakd", student, teacher, student_stages=["stage1", "stage2", "stage3"],
                               input_shape=(3, args.size, args.size), epochs=args.epochs, detach_until=1.0)
    optimizer = torch.optim.SGD(distiller.learnable_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    distiller.train()
    for epoch in range(args.epochs):
        for i, (x, y) in enumerate(loader):
            optimizer.zero_grad(set_to_none=True)
            loss = distiller.step(x, y, progress=(epoch + i / len(loader)) / args.epochs)
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {float(loss):.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(student.state_dict(), args.out / "student.pt")
    print(f"student saved to {args.out / 'student.pt'}")


if __name__ == "__main__":
    main()
