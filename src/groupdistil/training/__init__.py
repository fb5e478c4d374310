"""The training loop: ``engine`` (epochs, validation, selection, checkpoints), ``trainer`` (one
step), ``devices`` (device and precision), ``optim``, ``evaluation`` and ``finetune``.
"""
