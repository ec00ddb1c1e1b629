"""Distil a torchvision student from a torchvision teacher on an ImageFolder, in a plain PyTorch loop.

    python examples/distill_torchvision_imagefolder.py --data DIR --teacher-weights resnet34.pth --epochs 10

DIR holds one folder per class. lakd only builds the distiller; the loop, data and optimizer are yours.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torchvision
from torchvision import transforms

import lakd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="ImageFolder root (one sub-folder per class)")
    parser.add_argument("--teacher-weights", type=Path, help="state_dict of the torchvision resnet34 teacher")
    parser.add_argument("--method", default="lakd", help="any of lakd.list_methods()")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=128, help="training image side")
    parser.add_argument("--out", type=Path, default=Path("runs/example-torchvision"))
    parser.add_argument("--smoke", action="store_true", help="a few steps on generated images (for tests)")
    args = parser.parse_args()
    if args.smoke:
        from _smoke_data import make_image_folder

        args.data = make_image_folder(Path(tempfile.mkdtemp()) / "images")
        args.epochs, args.size = 1, 32
    if args.data is None:
        parser.error("--data DIR is required (or --smoke)")

    normalise = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # what the teacher saw
    data = torchvision.datasets.ImageFolder(args.data, transforms.Compose([
        transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalise]))
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, drop_last=True)
    classes = len(data.classes)

    teacher = torchvision.models.resnet34(num_classes=classes)
    if args.teacher_weights:
        teacher.load_state_dict(torch.load(args.teacher_weights, map_location="cpu", weights_only=True))
    student = torchvision.models.mobilenet_v3_small(num_classes=classes)
    # Preset stages for both (torchvision families); any other model: student_stages=[module paths].
    distiller = lakd.distiller(args.method, student, teacher, input_shape=(3, args.size, args.size),
                               epochs=args.epochs)
    optimizer = torch.optim.SGD(distiller.learnable_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    distiller.train()  # the teacher stays in eval mode
    for epoch in range(args.epochs):
        for i, (x, y) in enumerate(loader):
            optimizer.zero_grad(set_to_none=True)
            loss = distiller.step(x, y, progress=(epoch + i / len(loader)) / args.epochs)
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {float(loss):.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(distiller.student().state_dict(), args.out / "student.pt")  # torchvision's own keys
    print(f"student saved to {args.out / 'student.pt'}")


if __name__ == "__main__":
    main()
