"""Running recipes: a suite's jobs, tuning first (:mod:`~metalr.running.runner`), one run each
(:mod:`~metalr.running.job`), the tracker's runs (:mod:`~metalr.running.tracking`), the tables,
figures and history files a suite writes (:mod:`~metalr.running.outputs`), the output folder and
its lock (:mod:`~metalr.running.rundir`), sweeps over executors, the tracking stores,
provenance, and the one result model (:mod:`~metalr.running.results`) with its figures.
"""
