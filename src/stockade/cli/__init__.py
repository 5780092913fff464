"""The ``stockade`` command line: one module per group of verbs, wired in ``main``."""
