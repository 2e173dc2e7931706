"""``python -m envcache.cli``: the same command as the ``envcache`` entry point."""

import sys

from envcache.cli import main

sys.exit(main())
