"""Tuned sets: the file format, the τ lookups and τ functions a set holds, and the shipped index."""
