"""``python -m scaling.ladder``: see ``scaling.ladder.cli``."""

import sys

from scaling.ladder.cli import main

if __name__ == "__main__":
    sys.exit(main())
