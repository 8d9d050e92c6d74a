"""``python -m kitlib`` entry point."""

import sys

from kitlib.cli import main

sys.exit(main())
