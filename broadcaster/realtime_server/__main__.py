"""``python -m broadcaster.realtime_server``: the server on its own."""

import sys

from .cli import main

sys.exit(main())
