"""Data: CIFAR (npz-of-JPEG, python pickles, image folders), ImageFolder, synthetic; batched augmentation."""

from lakd.data.cifar import ImageArrays, load_cifar
from lakd.data.datasets import DATASETS, DatasetSplits, carve_validation, load_splits
from lakd.data.loader import BatchLoader
from lakd.data.root import resolve_data_root
from lakd.data.synthetic import make_synthetic

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DatasetSplits",
    "ImageArrays",
    "carve_validation",
    "load_cifar",
    "load_splits",
    "make_synthetic",
    "resolve_data_root",
]
