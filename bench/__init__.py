"""Benchmarks, run as scripts (`python bench/run.py`); a package so `bench.run` and
`bench.stores` import alike (and mypy sees one name for each)."""
