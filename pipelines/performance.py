"""MLproject entry point ``performance``: a thin shell over ``churn-platform performance``."""

import sys

from churn_platform.cli import main
from pipelines.monitor import _args

if __name__ == "__main__":
    args = _args(sys.argv[1:])
    if "--version" in args:  # MLproject passes numbers as floats
        at = args.index("--version") + 1
        args[at] = str(int(float(args[at])))
    main(["performance", *args], prog_name="pipelines.performance")
