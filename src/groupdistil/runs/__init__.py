"""The run folder: its layout, marker and replacement rules (``rundir``) and the files a run writes
(``outputs``).
"""
