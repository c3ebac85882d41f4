"""The `liquid-drones` command line: one sub-command per workflow verb."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

BENCH_TARGETS = ("env", "cores", "train", "learn")


def _bench(args: argparse.Namespace) -> None:
    if args.target == "env":
        from agents import bench_env

        bench_env.main(out_dir=args.out, quick=args.quick)
    elif args.target == "cores":
        from agents import bench_cores

        bench_cores.main(out_dir=args.out)
    elif args.target == "train":
        from agents import bench_train

        bench_train.main_throughput(out_dir=args.out, quick=args.quick)
    elif args.target == "learn":
        from agents import bench_train

        bench_train.main_learn(out_dir=args.out, quick=args.quick)


def _train(args: argparse.Namespace) -> None:
    from pathlib import Path

    from agents.checkpoint import CheckpointError
    from agents.config import DEFAULT_CONFIG, ConfigError, load_config, read_run_config
    from agents.train import default_run_name, prepare_run_dir, train

    overrides = list(args.set)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if args.config:
                config = load_config(args.config, overrides)
            else:
                config = read_run_config(run_dir / "config.yaml", overrides)
        else:
            name = args.config or DEFAULT_CONFIG
            config = load_config(name, overrides)
            label = Path(name).stem if name.endswith((".yaml", ".yml")) else name
            if "-" not in label:
                label = f"{label}-{config.policy.core}"
            run_dir = prepare_run_dir(Path(args.root), args.name or default_run_name(label))
        train(config, run_dir, resume=bool(args.resume))
    except (ConfigError, CheckpointError) as error:
        sys.exit(f"error: {error}")


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

    train = verbs.add_parser(
        "train",
        help="train a policy (default: Hover-v0 with a CfC core on an AutoNCP wiring)",
        description="Train a policy into runs/<name>/. Configs: a name from agents/configs "
        "(hover, waypoints, or task-core such as hover-lstm) or a YAML file.",
    )
    train.add_argument("--config", help="config name (e.g. hover, hover-lstm, waypoints-ncp-ltc) or YAML file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, dotted (e.g. --set algo.learning_rate=1e-3); repeatable")
    train.add_argument("--name", help="run folder name under --root (default: <config>-<timestamp>)")
    train.add_argument("--root", default="runs", help="output root folder")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    train.add_argument("--seed", type=int, help="seed (same as --set train.seed=N)")
    train.set_defaults(func=_train)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `liquid-drones` console script."""
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
