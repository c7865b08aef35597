"""`python -m auditor` is the same as the `drift-audit` command."""

import sys

from auditor.cli import main

sys.exit(main())
