"""Tuning: the generic τ tuner, its objectives, held-out selection, checkpoints, data-parallel split and the one tune pipeline."""
