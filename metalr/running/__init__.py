"""Running recipes: a suite's runs and seeds (:mod:`~metalr.running.runner`), the output folder and
its lock (:mod:`~metalr.running.rundir`), sweeps over executors, the tracking stores, provenance,
and the one result model (:mod:`~metalr.running.results`) with its figures.
"""
