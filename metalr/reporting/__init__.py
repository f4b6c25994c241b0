"""Reading finished runs back: suites from a tracking store through the tracker-reader contract
(:mod:`~metalr.reporting.suite_reader`), comparisons across seeds and the performance profile,
the HTML report and its Markdown twin, ``metalr reproduce`` (a document's sections regenerated
from committed recipes) and the model cards of meta-learned nets. ``assets/`` holds the report's
vendored chart library.
"""
