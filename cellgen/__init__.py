"""cellgen: synthetic fluorescent-cell segmentation benchmarks with exact ground truth."""

__version__ = "0.1.0"
