"""python -m qaexp.analyze RUN [OTHER_RUN] [--out DIR] (see qaexp.analysis.analyze)."""

import sys

from qaexp.analysis.analyze import main

if __name__ == "__main__":
    sys.exit(main())
