"""MLproject entry point ``retrain``: a thin shell over ``churn-platform retrain``."""

import sys

from churn_platform.cli import main
from pipelines.monitor import _args

if __name__ == "__main__":
    args = _args(sys.argv[1:], whole=("--of", "--at-least"))
    main(["retrain", *args], prog_name="pipelines.retrain")
