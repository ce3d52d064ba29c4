"""DeepExec's benchmark suite: our path and its baseline, interleaved, in one run.

Run everything with ``.venv/bin/python -m bench``; ``--quick`` for a smoke run, ``--only 1,3``
to pick benchmarks. Results of the last full run are in ``bench/RESULTS.md``.
"""
