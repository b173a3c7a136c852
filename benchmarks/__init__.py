"""The benchmark suite (``python benchmarks/run.py``, ``make bench``); see ``benchmarks/run.py``."""
