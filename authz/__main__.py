"""``python -m authz`` runs the command-line interface."""

import sys

from authz.cli import main

sys.exit(main())
