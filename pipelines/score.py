"""MLproject entry point ``score``: a thin shell over ``churn-platform score``.

``explain_top_k`` > 0 adds ``--explain --top-k K``; empty values and 0 mean "not given".
"""

import sys

from churn_platform.cli import main
from pipelines.monitor import _args

if __name__ == "__main__":
    args = _args(sys.argv[1:], whole=("--version", "--explain-top-k"))
    if "--explain-top-k" in args:
        at = args.index("--explain-top-k")
        args[at : at + 2] = ["--explain", "--top-k", args[at + 1]]
    main(["score", "--no-progress", *args], prog_name="pipelines.score")
