"""MLproject entry point ``retrain``: a thin shell over ``churn-platform retrain``."""

import sys

from churn_platform.cli import main
from pipelines.monitor import _args

if __name__ == "__main__":
    args = _args(sys.argv[1:])
    for flag in ("--of", "--at-least"):  # MLproject passes numbers as floats
        if flag in args:
            at = args.index(flag) + 1
            args[at] = str(int(float(args[at])))
    main(["retrain", *args], prog_name="pipelines.retrain")
