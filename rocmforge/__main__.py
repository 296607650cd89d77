"""``python -m rocmforge`` is the ``rocmforge`` command (for environments where the script is not on PATH)."""

import sys

from rocmforge.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
