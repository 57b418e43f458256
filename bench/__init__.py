"""The benchmark: `python -m bench [--quick]`."""
