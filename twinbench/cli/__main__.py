"""`python -m twinbench.cli`: the `twinbench` command."""

import sys

from twinbench.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
