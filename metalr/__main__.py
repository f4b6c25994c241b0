"""``python -m metalr`` is the ``metalr`` command; torchrun needs it: ``torchrun -m metalr run``."""

import sys

from metalr.cli import main

if __name__ == "__main__":
    sys.exit(main())
