"""The `liquid-drones` command line: one sub-command per workflow verb."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

BENCH_TARGETS = ("env", "cores", "train", "learn")


def _bench(args: argparse.Namespace) -> None:
    if args.target == "env":
        from agents.bench import env

        env.main(out_dir=args.out, quick=args.quick)
    elif args.target == "cores":
        from agents.bench import cores

        cores.main(out_dir=args.out, quick=args.quick)
    elif args.target == "train":
        from agents.bench import train

        train.main_throughput(out_dir=args.out, quick=args.quick)
    elif args.target == "learn":
        from agents.bench import learn

        configs = tuple(args.configs.split(",")) if args.configs else None
        try:
            learn.check_learn_configs(configs or ())
        except ValueError as error:
            sys.exit(f"liquid-drones bench learn: {error}")
        learn.main(out_dir=args.out, quick=args.quick, configs=configs, method=args.method)


def _verb(module: str) -> Callable[[argparse.Namespace], None]:
    """The ``main(args)`` of ``agents.<module>``, imported only when that verb runs."""

    def run(args: argparse.Namespace) -> None:
        importlib.import_module(f"agents.{module}").main(args)

    return run


TRUST = ("Run folders hold pickled Python objects (SB3 model.zip entries, checkpoints): loading one can run "
         "code. Load only runs you trust.")


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (a bad value stops before any work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _add_flight_options(parser: argparse.ArgumentParser) -> None:
    """Options of every verb that flies closed-loop episodes (evaluate, stress, compare)."""
    from agents.flight import DEFAULT_BATCH, DEFAULT_EPISODES, DEFAULT_SEED
    from agents.parallel import BACKENDS

    parser.add_argument("--episodes", type=at_least(1), default=DEFAULT_EPISODES,
                        help=f"episodes per setting (default {DEFAULT_EPISODES})")
    parser.add_argument("--seed", type=at_least(0), default=DEFAULT_SEED,
                        help=f"seed of the first episode; episode i uses seed + i (default {DEFAULT_SEED})")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of the policy mean")
    parser.add_argument("--batch", type=at_least(1), default=DEFAULT_BATCH,
                        help=f"envs stepped together per job (default {DEFAULT_BATCH})")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local process pool (default), Ray, or serial in this process")
    parser.add_argument("--workers", type=at_least(1), help="parallel workers (default: the CPU count)")
    parser.add_argument("--address", help="Ray cluster address (with --backend ray; default: a local Ray)")
    parser.add_argument("--env", help="env of the PID expert when no run is given (default Hover-v0)")
    parser.add_argument("--action", help="action mode of the PID expert (motors, ctbr, velocity)")
    parser.add_argument("--root", default="runs", help="output root folder")


def _add_run_options(parser: argparse.ArgumentParser, example: str, default_name: str) -> None:
    """Options of the verbs that write a run folder (train, imitate)."""
    parser.add_argument("--config", help="config name (e.g. hover, hover-lstm, waypoints-ncp-ltc) or YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, dotted (e.g. --set {example}); repeatable")
    parser.add_argument("--name", help=f"run folder name under --root (default: {default_name})")
    parser.add_argument("--root", default="runs", help="output root folder")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    parser.add_argument("--seed", type=at_least(0), help="seed (same as --set train.seed=N)")


def _add_sweep_options(parser: argparse.ArgumentParser) -> None:
    """Options of the verbs that sweep disturbance levels (stress, compare)."""
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folders written by train")
    parser.add_argument("--expert", action="store_true", help="add the cascaded-PID expert as a baseline")
    parser.add_argument("--axes", action="append", metavar="AXIS[,AXIS]",
                        help="disturbance axes to sweep (default: every axis the env responds to); repeatable")
    parser.add_argument("--levels", action="append", default=[], metavar="AXIS=V1,V2,...",
                        help="levels of one axis instead of its defaults; repeatable")
    parser.add_argument("--out", help="output folder (default: <root>/<verb>-<timestamp>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    _add_flight_options(parser)


class _PrintVersion(argparse.Action):
    """``--version``: print `agents.provenance.version_line` and exit (git is asked only then)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from agents.provenance import version_line

        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="liquid-drones",
        description="Train, evaluate and stress-test liquid-network quadrotor policies.",
    )
    parser.add_argument("--version", action=_PrintVersion,
                        help="print the package version (and git commit of a checkout) and exit")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    listing = verbs.add_parser("list", help="configs, env IDs, cores, disturbance axes (units, levels), studies")
    listing.set_defaults(func=_verb("listing"))

    bench = verbs.add_parser("bench", help="measure simulator, core and training speed")
    bench.add_argument("target", choices=BENCH_TARGETS, help="what to measure")
    bench.add_argument("--out", default="runs/bench", help="folder for the CSV/JSON/PNG results")
    bench.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    bench.add_argument("--configs", default=None,
                       help="learn only: comma-separated configs <hover|waypoints>-<core> instead of the default "
                       "ncp-cfc, lstm, mlp of both tasks (e.g. hover-gru,waypoints-ltc)")
    bench.add_argument("--method", choices=("rl", "imitate", "both"), default="rl",
                       help="learn only: train with RL (default), imitate the PID expert, or both side by side")
    bench.set_defaults(func=_bench)

    from agents.config import describe_schema

    train = verbs.add_parser(
        "train",
        help="train a policy (default: Hover-v0 with a CfC core on an AutoNCP wiring)",
        description="Train a policy into runs/<name>/. Configs: a name from agents/configs "
        "(hover, waypoints, or task-core such as hover-lstm) or a YAML file. --resume loads the run's "
        "checkpoints: " + TRUST,
        epilog="config keys (--set KEY=VALUE), with their built-in defaults:\n" + describe_schema(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_options(train, "algo.learning_rate=1e-3", "<config>-<timestamp>")
    train.add_argument("--init-from", metavar="RUN_DIR",
                       help="fine-tune an imitated run: its actor and normalisation, critic warmed up first "
                       "(default config: that run's)")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config (file + --set + --seed) as YAML and exit without training")
    train.set_defaults(func=_verb("train"))

    imitate = verbs.add_parser(
        "imitate",
        help="behaviour cloning + DAgger from the env's PID expert (same configs and run folder as train)",
        description="Clone the env's cascaded-PID expert into runs/<name>/: expert demonstrations, "
        "sequence behaviour cloning, DAgger rounds (config section imitation.*). --resume loads the run's "
        "checkpoints: " + TRUST,
        epilog="config keys (--set KEY=VALUE), with their built-in defaults:\n" + describe_schema(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_options(imitate, "imitation.dagger_rounds=5", "<config>-imitate-<timestamp>")
    imitate.set_defaults(func=_verb("imitate"))

    evaluate = verbs.add_parser(
        "evaluate",
        help="closed-loop episodes of a run (or the PID expert): metrics, trajectories, video",
        description="Fly episodes with a trained run (or --agent expert) and write episodes.csv, "
        "metrics.json, trajectories.png and, with --video, a video; default folder RUN_DIR/eval-<setting>. "
        + TRUST,
    )
    evaluate.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="run folder written by train")
    evaluate.add_argument("--agent", choices=("policy", "expert"), default="policy",
                          help="who flies: the run's policy (default) or the env's cascaded-PID expert")
    evaluate.add_argument("--disturb", action="append", default=[], metavar="AXIS=VALUE",
                          help="disturbance level (e.g. wind=3; AXIS=LOW:HIGH draws per episode); repeatable")
    evaluate.add_argument("--video", action="store_true", help="also record the first episodes (MP4, else GIF)")
    from agents.evaluate import VIDEO_EPISODES

    evaluate.add_argument("--video-episodes", type=int, default=VIDEO_EPISODES,
                          help=f"episodes in the video (default {VIDEO_EPISODES})")
    from agents.run import MODEL_CHOICES

    evaluate.add_argument("--model", choices=MODEL_CHOICES, default="final",
                          help="which model of the run: final (model.zip, default), best (best periodic evaluation) "
                          "or checkpoint (--step, default the newest; its normalisation is a pickle)")
    evaluate.add_argument("--step", type=at_least(0), help="env steps of the checkpoint (with --model checkpoint)")
    evaluate.add_argument("--out", help="output folder")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an evaluation already in the folder")
    _add_flight_options(evaluate)
    evaluate.set_defaults(func=_verb("evaluate"))

    stress = verbs.add_parser(
        "stress",
        help="success vs disturbance level per axis for runs (and the expert), paired seeds",
        description="Sweep each disturbance axis over its levels with the same episode seeds for every "
        "run and level; writes episodes.csv, results.csv, summary.json, robustness.png and report.md. " + TRUST,
    )
    _add_sweep_options(stress)
    stress.set_defaults(func=_verb("stress"))

    compare = verbs.add_parser(
        "compare",
        help="runs side by side: core, parameters, in-distribution and OOD success, training cost",
        description="Compare runs from one paired stress test (flown into <out>/stress unless --stress "
        "names a finished one); writes compare.csv, compare.md and compare.png. " + TRUST,
    )
    compare.add_argument("--stress", metavar="STRESS_DIR", help="reuse this finished stress test")
    _add_sweep_options(compare)
    compare.set_defaults(func=_verb("compare"))

    from agents.parallel import BACKENDS

    study = verbs.add_parser(
        "study",
        help="variants x training seeds: train all, one paired stress test, hierarchical intervals, report",
        description="Run a study spec (a name from agents/configs/studies, e.g. hover-cores, or a YAML file): "
        "train every variant x seed (resuming finished and interrupted runs), fly one paired stress test of all "
        "runs, and write runs.csv, curves.csv, study.json, report.md and PNGs into --out. " + TRUST,
    )
    study.add_argument("spec", metavar="SPEC", help="study spec name or YAML file")
    study.add_argument("--out", help="study folder (default: <root>/study-<spec>); rerun to resume")
    study.add_argument("--root", default="runs", help="output root folder")
    study.add_argument("--workers", type=at_least(1), default=2,
                       help="training runs (and stress jobs) at a time, one torch thread each (default 2)")
    study.add_argument("--backend", choices=BACKENDS, default="local",
                       help="local process pool (default), Ray (training runs and stress jobs as Ray tasks), "
                       "or serial in this process")
    study.add_argument("--address", help="Ray cluster address (with --backend ray; default: a local Ray)")
    study.set_defaults(func=_verb("study"))

    export = verbs.add_parser(
        "export",
        help="a run's actor (normalisation + encoder + core + head) as TorchScript, ONNX or plain C99",
        description="Export the deterministic actor of a finished run with an explicit state in/out: "
        "torchscript (actor.pt), onnx (actor.onnx; pip install 'liquid-drones[onnx]') or c (actor.c + actor.h, "
        "float32, no allocation, with footprint.json: flash/RAM bytes and cycles per step). " + TRUST,
    )
    export.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by train")
    export.add_argument("--format", choices=("torchscript", "onnx", "c"), default="torchscript",
                        help="artefact format (default torchscript)")
    export.add_argument("--out", help="output folder (default: RUN_DIR/export-<format>)")
    export.set_defaults(func=_verb("export"))

    tune = verbs.add_parser(
        "tune",
        help="equal-budget hyper-parameter search of a config with Optuna (TPE, pruning, resumable)",
        description="Tune a config: each trial trains --budget env steps with keys sampled from the search "
        "space; writes trials.csv, best.yaml (train --config takes it), history.png, importance.png and "
        "report.md. Rerunning the same command continues the study.",
    )
    tune.add_argument("--config", required=True, help="config name (e.g. hover-ltc) or YAML file")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="fix a config key in every trial (and in best.yaml); repeatable")
    tune.add_argument("--trials", type=int, default=40,
                      help="complete + pruned (+ running) trials the study should hold (default 40)")
    tune.add_argument("--budget", type=int, metavar="STEPS",
                      help="env steps per trial (default: the config's train.total_timesteps)")
    tune.add_argument("--space", help="search space YAML (default agents/configs/tune/default.yaml)")
    tune.add_argument("--storage", help="SQLAlchemy URL or journal:PATH (default sqlite:///<out>/study.db)")
    tune.add_argument("--study-name", help="study name in the storage (default tune-<config>)")
    tune.add_argument("--pruner", choices=("median", "none"), default="median",
                      help="stop trials below the median of earlier ones at the same step (default), or never")
    tune.add_argument("--workers", type=int, default=1, help="trials at a time (local processes or Ray CPUs)")
    tune.add_argument("--backend", choices=("local", "ray"), default="local", help="local processes or Ray tasks")
    tune.add_argument("--address", help="Ray cluster address (with --backend ray; default: a local Ray)")
    tune.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    tune.add_argument("--out", help="output folder (default runs/tune-<config>)")
    tune.set_defaults(func=_verb("tune"))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `liquid-drones` console script."""
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
