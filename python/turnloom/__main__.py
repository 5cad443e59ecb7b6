"""`python -m turnloom` is the `turnloom` command."""

import sys

from turnloom.cli import main

sys.exit(main())
