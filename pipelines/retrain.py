"""MLproject entry point ``retrain``: a thin shell over ``churn-platform retrain``."""

import sys

from churn_platform.cli import main
from pipelines.monitor import _args


def command(argv: list[str]) -> list[str]:
    """The ``churn-platform`` arguments for the entry point's."""
    return ["retrain", *_args(argv, whole=("--of", "--at-least"), not_empty=("--if",))]


if __name__ == "__main__":
    main(command(sys.argv[1:]), prog_name="pipelines.retrain")
