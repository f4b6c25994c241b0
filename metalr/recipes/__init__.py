"""Recipes: the schema of a YAML experiment (:mod:`~metalr.recipes.schema`), the loader that reads
it strictly with its overrides (:mod:`~metalr.recipes.loader`), the checks that build each
component once before any data is touched (:mod:`~metalr.recipes.validation`), and the plugin
template (:mod:`~metalr.recipes.template`). Each problem is reported at its key and line.
"""
