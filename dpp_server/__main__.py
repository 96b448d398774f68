"""``python -m dpp_server`` is the ``dpp`` command."""

import sys

from dpp_server.cli import main

sys.exit(main())
