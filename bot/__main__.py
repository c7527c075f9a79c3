"""`python -m bot` is the same as the `sam3d-bot` command."""

import sys

from .cli import main

sys.exit(main())
