"""MLproject entry point ``monitor``: a thin shell over ``churn-platform monitor``.

MLproject parameters cannot be absent, so empty values mean "not given" here.
"""

import sys

from churn_platform.cli import main


def _args(argv: list[str], whole: tuple[str, ...] = ()) -> list[str]:
    """``--flag value`` pairs without the "not given" ones; the ``whole`` flags' values as
    integers (MLproject passes numbers as floats: ``3.0``)."""
    out: list[str] = []
    pairs = iter(argv)
    for flag in pairs:
        value = next(pairs, "")
        if value in ("", "0", "0.0"):
            continue
        out += [flag, str(int(float(value))) if flag in whole else value]
    return out


if __name__ == "__main__":
    main(["monitor", *_args(sys.argv[1:])], prog_name="pipelines.monitor")
