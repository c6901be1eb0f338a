"""plastibench: a benchmark for plasticity-preserving methods in continual deep learning."""

__version__ = "0.1.0"
