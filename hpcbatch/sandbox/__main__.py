"""`python -m hpcbatch.sandbox up|down|status [--root DIR]`: runs `command.main`."""

from __future__ import annotations

import sys

from hpcbatch.sandbox.command import main

if __name__ == "__main__":
    sys.exit(main())
