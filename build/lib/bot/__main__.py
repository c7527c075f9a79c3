"""`python -m bot` is the same as the `sam3d-bot` command."""

import sys

from .cli import main

if __name__ == "__main__":  # the render worker's spawn start re-imports this module
    sys.exit(main())
