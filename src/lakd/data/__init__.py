"""Data: CIFAR (npz-of-JPEG, python pickles, image folders), ImageFolder, synthetic; batched augmentation.

Small datasets are decoded into RAM (``ImageArrays`` + ``BatchLoader``); large ones (ImageNet) stream from disk
(``FileList`` + ``StreamLoader``). ``make_loader`` picks the loader for a split.
"""

from lakd.data.batches import Batching
from lakd.data.cifar import ImageArrays, load_cifar
from lakd.data.datasets import DATASETS, DatasetSplits, as_arrays, carve_validation, load_splits
from lakd.data.loader import BatchLoader, make_loader
from lakd.data.root import resolve_data_root
from lakd.data.stream import FileList, StreamLoader, scan_file_list
from lakd.data.synthetic import make_synthetic

__all__ = [
    "Batching",
    "DATASETS",
    "BatchLoader",
    "DatasetSplits",
    "FileList",
    "ImageArrays",
    "StreamLoader",
    "as_arrays",
    "carve_validation",
    "load_cifar",
    "load_splits",
    "make_loader",
    "make_synthetic",
    "resolve_data_root",
    "scan_file_list",
]
