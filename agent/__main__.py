"""``python -m agent`` is ``sensorkit``."""

import sys

from agent.cli import main

sys.exit(main())
