"""``python -m pcipass``."""

import sys

from pcipass.cli.main import main

sys.exit(main(sys.argv[1:]))
