"""mlrunner: run a sweep of experiments on a pool of GPU workers."""

__version__ = "0.6.0"
