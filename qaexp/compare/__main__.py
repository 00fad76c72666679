"""python -m qaexp.compare PATH... [--out DIR] (see qaexp.analysis.compare)."""

import sys

from qaexp.analysis.compare import main

if __name__ == "__main__":
    sys.exit(main())
