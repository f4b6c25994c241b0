"""What the core and the plugins agree on: the protocols a component implements
(:mod:`~metalr.contracts.protocols`), the hooks that register it
(:mod:`~metalr.contracts.hookspecs`), the registry that finds it through entry points
(:mod:`~metalr.contracts.registry`), and the small pieces both sides share (options derived from
a signature, a recipe problem, the strict YAML reader). Imports nothing else of metalr: this is
the floor every other layer and every plugin stands on. Nothing is imported here, so
``from metalr import hookimpl`` stays a pluggy import.
"""
