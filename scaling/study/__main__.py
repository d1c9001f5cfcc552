"""``python -m scaling.study``: see ``scaling.study.cli``."""

import sys

from scaling.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
