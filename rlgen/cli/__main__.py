"""``python -m rlgen.cli``: the ``rlgen`` command."""

import sys

from rlgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
