"""Speed and memory measurements of roar, run by ``python -m benchmarks.run`` (never by the test suite).

Every figure is a ratio of two things measured side by side in the same run, on the same
machine, with the same thread count, so that the noise of a shared machine affects both sides
alike. See ``benchmarks/README.md`` for what each figure measures and its target.
"""
