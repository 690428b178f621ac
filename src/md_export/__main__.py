"""`python -m md_export ...`: the same as the md-export command."""

import sys

from md_export.cli.app import main

sys.exit(main(sys.argv[1:]))
