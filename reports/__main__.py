"""`python -m reports {report,compare,tables} ...` (the same as `perpo report` / `perpo compare`)."""

import sys

from reports.cli import main

sys.exit(main())
