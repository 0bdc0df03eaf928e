"""noisybench: a benchmark suite for learning with noisy labels (BSD, BSD+ and baselines)."""

__version__ = "0.2.0"
