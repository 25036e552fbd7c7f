"""``python -m epochkit.audit compare A.json B.json``: at which epoch, loader and rank two runs first presented a
different order, from the order digests in their ``shuffle_audit.json``.

Exit status: 0 when the runs share at least one epoch and every shared epoch presented the same order, 1 at the first
difference or with no epoch in common, 2 when a report cannot be read.
"""

from __future__ import annotations

import argparse
import sys

from epochkit.audit.digests import compare


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m epochkit.audit", description="Tools over ShuffleAudit reports (shuffle_audit.json)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cmp = commands.add_parser(
        "compare",
        help="say at which epoch, loader and rank two runs first presented a different order",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument("a", help="shuffle_audit.json of run A")
    cmp.add_argument("b", help="shuffle_audit.json of run B")
    args = parser.parse_args(argv)
    try:
        result = compare(args.a, args.b)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.message)
    return 0 if result.identical else 1


if __name__ == "__main__":
    sys.exit(main())
