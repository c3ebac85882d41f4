"""The `liquid-drones` command line: one sub-command per workflow verb."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

BENCH_TARGETS = ("env", "cores")


def _bench(args: argparse.Namespace) -> None:
    if args.target == "env":
        from agents import bench_env

        bench_env.main(out_dir=args.out, quick=args.quick)
    elif args.target == "cores":
        from agents import bench_cores

        bench_cores.main(out_dir=args.out)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="liquid-drones",
        description="Train, evaluate and stress-test liquid-network quadrotor policies.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    bench = verbs.add_parser("bench", help="measure simulator, core and training speed")
    bench.add_argument("target", choices=BENCH_TARGETS, help="what to measure")
    bench.add_argument("--out", default="runs/bench", help="folder for the CSV/JSON/PNG results")
    bench.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `liquid-drones` console script."""
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
