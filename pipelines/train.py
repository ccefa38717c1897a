"""MLproject entry point ``train``: a thin shell over ``churn-platform train``."""

import sys

from churn_platform.cli import main
from churn_platform.training_config import DATA_OPTIONS, SYNTHETIC, TrainConfig, option_flag
from pipelines.monitor import _args, _switch


def command(argv: list[str]) -> list[str]:
    """The ``churn-platform`` arguments for the entry point's: whole numbers arrive as floats
    (300.0), an empty decision_threshold means the setting's, and zero is a value (seed 0)."""
    args = _args(argv, whole=("--n-rows", "--max-iter", "--max-depth", "--seed"), not_empty=("--data", "--model-type"))
    # MLproject passes every parameter: one at its default was not given, and is not refused
    # beside the feature store (data, n_rows) or a file (n_rows).
    if _switch(args, "--from-features"):
        unsaid = DATA_OPTIONS
    elif "--data" in args and args[args.index("--data") + 1] not in ("", SYNTHETIC):
        unsaid = ("n_rows",)
    else:
        unsaid = ()
    for flag, default in ((option_flag(k), str(getattr(TrainConfig, k))) for k in unsaid):
        if flag in args and args[args.index(flag) + 1] == default:
            del args[args.index(flag) : args.index(flag) + 2]
    return ["train", *args]


if __name__ == "__main__":
    main(command(sys.argv[1:]), prog_name="pipelines.train")
