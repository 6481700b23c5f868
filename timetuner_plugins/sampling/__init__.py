"""Sampling: the samplers (one function each, one signature), schedules, noise and running a sampler with or without a τ lookup."""
