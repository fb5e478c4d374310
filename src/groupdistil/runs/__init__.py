"""The run folder: its layout, marker and replacement rules (``rundir``), the files a run writes
(``outputs``) and the lock that keeps it to one live process (``lock``).
"""
