"""Evaluation: FD and trajectory error of a sampler, with and without a tuned set."""
