"""MLproject entry point ``score``: a thin shell over ``churn-platform score``.

``explain_top_k`` > 0 adds ``--explain --top-k K``; ``with_features`` true adds the flag;
empty values and 0 mean "not given".
"""

import sys

from churn_platform.cli import main
from pipelines.monitor import _args, _switch


def command(argv: list[str]) -> list[str]:
    """The ``churn-platform`` arguments for the entry point's."""
    numbers = ("--version", "--explain-top-k", "--chunk-rows")
    args = _args(argv, whole=numbers, zero_unset=(*numbers, "--max-reject-share"),
                 not_empty=("--input", "--output", "--engine"))
    _switch(args, "--with-features")
    if "--explain-top-k" in args:
        at = args.index("--explain-top-k")
        args[at : at + 2] = ["--explain", "--top-k", args[at + 1]]
    return ["score", "--no-progress", *args]


if __name__ == "__main__":
    main(command(sys.argv[1:]), prog_name="pipelines.score")
