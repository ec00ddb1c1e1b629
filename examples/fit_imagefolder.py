"""Your dataset objects, your models, lakd's trainer: `lakd.fit` with torchvision ImageFolder datasets.

    python examples/fit_imagefolder.py --data DIR --teacher-weights resnet18.pth --epochs 10

DIR holds train/ and val/ (one sub-folder per class in each). The transforms (augmentation included) are yours;
lakd gives the run folder: checkpoints, resume (run again with --resume), metrics, best-on-validation selection.
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
    parser.add_argument("--data", type=Path, help="folder with train/ and val/ ImageFolders")
    parser.add_argument("--teacher-weights", type=Path, help="state_dict of a torchvision resnet18 for these classes")
    parser.add_argument("--method", default="lakd", help="any of lakd.list_methods()")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=128, help="training image side")
    parser.add_argument("--out", type=Path, default=Path("runs/example-fit"))
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--smoke", action="store_true", help="a few steps on generated images (for tests)")
    args = parser.parse_args()
    settings = {}
    if args.smoke:
        from _smoke_data import make_image_folder

        root = Path(tempfile.mkdtemp())
        for split in ("train", "val"):
            make_image_folder(root / split)
        args.data, args.epochs, args.size = root, 1, 32
        settings = {"data.eval_batch_size": 16}
    if args.data is None:
        parser.error("--data DIR is required (or --smoke)")

    normalise = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # what the teacher saw
    train = torchvision.datasets.ImageFolder(args.data / "train", transforms.Compose([
        transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalise]))
    val = torchvision.datasets.ImageFolder(args.data / "val", transforms.Compose([
        transforms.Resize(args.size), transforms.CenterCrop(args.size), transforms.ToTensor(), normalise]))
    classes = len(train.classes)

    teacher = torchvision.models.resnet18(num_classes=classes)
    if args.teacher_weights:
        teacher.load_state_dict(torch.load(args.teacher_weights, map_location="cpu", weights_only=True))
    student = torchvision.models.mobilenet_v3_small(num_classes=classes)
    # torchvision and timm models find their stages; your own module: student_stages=[module paths]
    summary = lakd.fit(student, teacher, train=train, val=val, method=args.method, epochs=args.epochs,
                       batch_size=8 if args.smoke else 64, lr=0.02, out=args.out, resume=args.resume,
                       progress=not args.smoke, settings=settings)
    print(f"best epoch {summary.best_epoch}: val top-1 {summary.best_val_top1:.2f} %, "
          f"{summary.train_img_per_s:.0f} img/s")
    summary.load_best(student)  # the best-on-validation weights, torchvision's own keys
    torch.save(student.state_dict(), args.out / "student.pt")
    print(f"student saved to {args.out / 'student.pt'}")


if __name__ == "__main__":
    main()
