"""lakd: Local Attention Knowledge Distillation and standard KD baselines for image classifiers."""

__version__ = "0.1.0"
