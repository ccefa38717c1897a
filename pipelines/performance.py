"""MLproject entry point ``performance``: a thin shell over ``churn-platform performance``."""

import sys

from churn_platform.cli import main
from pipelines.monitor import _args


def command(argv: list[str]) -> list[str]:
    """The ``churn-platform`` arguments for the entry point's."""
    return ["performance", *_args(argv, whole=("--version",), zero_unset=("--version",))]


if __name__ == "__main__":
    main(command(sys.argv[1:]), prog_name="pipelines.performance")
