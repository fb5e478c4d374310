"""``python -m groupdistil`` is the ``groupdistil`` command (so torchrun can launch it)."""

from groupdistil.cli import main

if __name__ == "__main__":
    main()
