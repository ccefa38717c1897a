"""MLproject entry point ``train``: a thin shell over ``churn-platform train``."""

import sys

from churn_platform.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="pipelines.train")
