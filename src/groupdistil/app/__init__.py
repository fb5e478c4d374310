"""The application: one experiment end to end (``runner``), sweeps (``sweep``) and the demo (``demo``).
"""
