"""``python -m broadcaster.cli`` runs the command line, as ``python -m broadcaster`` does."""

import sys

from . import main

sys.exit(main())
