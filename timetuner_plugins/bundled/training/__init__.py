"""Training scripts for the bundled models (see ``digits.py``)."""
