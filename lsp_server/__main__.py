"""`python -m lsp_server`: the same as `codefill-lsp`."""

import sys

from lsp_server.cli import main

sys.exit(main())
