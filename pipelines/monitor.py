"""MLproject entry point ``monitor``: a thin shell over ``churn-platform monitor``.

MLproject parameters cannot be absent, so empty values mean "not given" here.
"""

import math
import sys

from churn_platform.cli import main
from churn_platform.contract import ExitCode


def _args(
    argv: list[str], whole: tuple[str, ...] = (), zero_unset: tuple[str, ...] = (), not_empty: tuple[str, ...] = ()
) -> list[str]:
    """``--flag value`` pairs without the "not given" ones: empty values, and 0 for the
    ``zero_unset`` flags (whose MLproject default is 0); the ``whole`` flags' values as
    integers (MLproject passes numbers as floats: ``3.0``). Any other 0 goes on to be
    checked: ``-P of=0`` is refused, not run as the default. An empty ``not_empty`` flag
    (its default is a value, or it has none) is a usage error: ``-P data=$DATA`` with the
    variable unset trained and registered a model of synthetic customers."""
    out: list[str] = []
    pairs = iter(argv)
    for flag in pairs:
        value = next(pairs, "")
        if flag in not_empty and not value.strip():
            print(f"error: parameter {_param(flag)} is empty (an unset shell variable?)", file=sys.stderr)
            sys.exit(int(ExitCode.USAGE))
        if value == "" or (flag in zero_unset and value in ("0", "0.0")):
            continue
        out += [flag, _whole(flag, value) if flag in whole else value]
    return out


def _param(flag: str) -> str:
    """The MLproject parameter behind ``flag``, as messages name it (``--if`` is ``trigger``)."""
    return {"--if": "trigger"}.get(flag, flag.lstrip("-").replace("-", "_"))


def _switch(args: list[str], flag: str) -> bool:
    """Turn a true/false parameter's ``--flag value`` pair in ``args`` into the bare flag, or
    nothing when false; whether it is on. Any other value is a usage error (exit 2) naming
    the parameter: ``on`` read as false ran the job without it."""
    if flag not in args:
        return False
    at = args.index(flag)
    given = args.pop(at + 1)
    value = given.strip().lower()
    if value not in ("true", "1", "yes", "false", "0", "no"):
        print(f"error: parameter {_param(flag)} must be true or false, got {given!r}", file=sys.stderr)
        sys.exit(int(ExitCode.USAGE))
    if value in ("false", "0", "no"):
        args.pop(at)
        return False
    return True


def _whole(flag: str, value: str) -> str:
    """``3.0`` as ``3``. A fraction, ``nan`` or ``inf`` is a usage error (exit 2) naming the
    MLproject parameter: truncating would run with a value nobody asked for."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not number.is_integer():
        print(f"error: parameter {_param(flag)} must be a whole number, got {value!r}", file=sys.stderr)
        sys.exit(int(ExitCode.USAGE))
    return str(int(number))


def command(argv: list[str]) -> list[str]:
    """The ``churn-platform`` arguments for the entry point's."""
    return ["monitor", *_args(argv, whole=("--rows",), zero_unset=("--rows",))]


if __name__ == "__main__":
    main(command(sys.argv[1:]), prog_name="pipelines.monitor")
