"""TimeTuner plugins: samplers, model adapters, the generic τ tuner, tuned sets and the CLI."""

__version__ = "0.1.0"
