"""MLproject entry point ``monitor``: a thin shell over ``churn-platform monitor``.

MLproject parameters cannot be absent, so empty values mean "not given" here.
"""

import sys

from churn_platform.cli import main


def _args(argv: list[str], whole: tuple[str, ...] = (), unset: tuple[str, ...] = ("", "0", "0.0")) -> list[str]:
    """``--flag value`` pairs without the "not given" ones (``unset`` values); the ``whole``
    flags' values as integers (MLproject passes numbers as floats: ``3.0``)."""
    out: list[str] = []
    pairs = iter(argv)
    for flag in pairs:
        value = next(pairs, "")
        if value in unset:
            continue
        out += [flag, str(int(float(value))) if flag in whole else value]
    return out


def command(argv: list[str]) -> list[str]:
    """The ``churn-platform`` arguments for the entry point's."""
    return ["monitor", *_args(argv, whole=("--rows",))]


if __name__ == "__main__":
    main(command(sys.argv[1:]), prog_name="pipelines.monitor")
