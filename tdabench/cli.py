"""The ``tdabench`` command line: ``list``, ``groundtruth`` and ``run``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import registry, runner
from .data import DataError
from .groundtruth import BankMismatch
from .method import MissingDependency


def _assignments(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="task name (see `tdabench list`)")
    p.add_argument("--preset", default="tiny", help="task preset (default: tiny)")
    p.add_argument("--set", dest="spec_overrides", action="append", default=[],
                   metavar="FIELD=VALUE",
                   help="override a spec field, e.g. --set groundtruth.n_subsets=64")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="ground-truth worker processes, one torch thread each (default: %(default)s)")
    p.add_argument("--bank", type=Path, default=None,
                   help="ground-truth bank directory (default: under $TDABENCH_CACHE)")


def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="method name (see `tdabench list`)")
    _add_task_args(p)
    p.add_argument("--seed", type=int, default=0, help="the method's seed (default: 0)")
    p.add_argument("--config", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a method config field, e.g. --config similarity=cosine")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="a trained checkpoint for methods that take one (same as --config checkpoint=PATH)")


def cmd_list(args: argparse.Namespace) -> None:
    print("tasks (jsonl:PATH runs your own data):")
    for name in registry.task_names():
        task = registry.get_task(name)
        where = "needs the Hugging Face hub" if task.needs_hub else "offline"
        print(f"  {name:<14} {task.description}")
        print(f"  {'':<14} source labels: {task.labels or 'n/a'}; {where}")
        for preset, spec in sorted(task.presets.items()):
            d, g = spec.data, spec.groundtruth
            size = f"pool {d.n_pool}, targets {d.n_targets}" if d.n_pool else "pool and targets as published"
            truth = (f"{g.n_subsets} subsets x {g.n_seeds} seed(s) of {g.fraction:.0%}"
                     if g.source == "finetune" else f"{g.n_subsets} published subsets")
            print(f"  {'':<14} preset {preset}: {size}; {truth}; model {spec.model.name or spec.model.init}")
    print("methods:")
    for name in registry.method_names():
        doc = (sys.modules[registry.get_method(name).__module__].__doc__ or "").strip()
        print(f"  {name:<14} {doc.splitlines()[0] if doc else ''}")


def cmd_groundtruth(args: argparse.Namespace) -> None:
    bank = runner.groundtruth(args.task, args.preset, _assignments(args.spec_overrides),
                              args.workers, args.bank)
    m, r, t = bank.losses.shape
    labels = bank.labels()
    print(f"ground truth for {args.task}/{args.preset}: {m} subsets x {r} seeds x {t} targets "
          f"at {bank.path}")
    print(f"  mean target loss {-labels.mean():.4f}; mean spread over subsets "
          f"(std per target) {labels.std(axis=1).mean():.4f}")


def cmd_run(args: argparse.Namespace) -> None:
    record, path = runner.run(args.method, args.task, args.preset, args.seed, _method_config(args),
                              _assignments(args.spec_overrides), args.workers, args.results_dir,
                              args.bank, args.group_score)
    print(runner.summary(record))
    print(f"record: {path}")


def _method_config(args: argparse.Namespace) -> dict[str, str]:
    config = _assignments(args.config)
    if args.checkpoint:
        config["checkpoint"] = args.checkpoint
    return config


def cmd_train(args: argparse.Namespace) -> None:
    path = runner.train(args.method, args.task, args.preset, args.seed, _method_config(args),
                        _assignments(args.spec_overrides), args.workers)
    print(f"trained {args.method} for {args.task}/{args.preset}: {path}")


def _load_records(args: argparse.Namespace):
    from . import leaderboard

    selection = leaderboard.load(args.results or [Path("results")], args.task, args.spec)
    for warning in selection.warnings():
        print(f"tdabench: warning: {warning}", file=sys.stderr)
    return selection

def cmd_leaderboard(args: argparse.Namespace) -> None:
    from . import leaderboard

    selection = _load_records(args)
    text = leaderboard.render(leaderboard.table(selection), args.format, selection)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text, end="")

def cmd_plot(args: argparse.Namespace) -> None:
    from . import plots

    for path in plots.plot_all(_load_records(args), args.out):
        print(path)

def _add_records_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", type=Path, nargs="+", action="extend", default=[], metavar="DIR",
                   help="directory trees of result records, merged (default: ./results)")
    p.add_argument("--task", nargs="+", action="extend", default=[], metavar="TASK",
                   help="only these tasks (TASK or TASK/PRESET; default: all)")
    p.add_argument("--spec", nargs="+", action="extend", default=[], metavar="HASH",
                   help="show this spec hash (or a prefix) of its task instead of the newest")

def cmd_reproduce(args: argparse.Namespace) -> None:
    import json

    configs = {}
    if args.configs.exists():
        configs = {k: v for k, v in json.loads(args.configs.read_text()).items() if not k.startswith("_")}
    written = runner.reproduce(args.preset, args.task or None, args.method or None, configs,
                               args.results_dir, args.workers)
    print(f"{len(written)} new record(s) under {args.results_dir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdabench", description="Benchmark training data attribution methods on LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list tasks, presets and methods")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("groundtruth", help="build (or resume) a task's counterfactual ground truth")
    _add_task_args(p)
    p.set_defaults(func=cmd_groundtruth)

    p = sub.add_parser("train", help="train a learned method (e.g. airrep) for a task")
    _add_method_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run one method on one task and write its result record")
    _add_method_args(p)
    p.add_argument("--results-dir", type=Path, default=Path("results"),
                   help="where result records go (default: ./results)")
    p.add_argument("--group-score", choices=["sum", "attention"], default=None,
                   help="force this group score (default: the method's own, else the sum)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reproduce", help="every method on every offline task of a preset (resumes)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--task", nargs="+", action="extend", default=[], help="only these tasks")
    p.add_argument("--method", nargs="+", action="extend", default=[], help="only these methods")
    p.add_argument("--configs", type=Path, default=Path("results/configs.json"),
                   help="method config overrides, JSON {method: {field: value}} (default: %(default)s)")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("leaderboard", help="tabulate result records: methods x tasks, best marked")
    _add_records_args(p)
    p.add_argument("--format", choices=["markdown", "csv", "latex"], default="markdown",
                   help="output format (default: markdown)")
    p.add_argument("--out", type=Path, default=None, help="write to this file (default: stdout)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("plot", help="figures from result records: LDS, LDS vs time, per-target LDS")
    _add_records_args(p)
    p.add_argument("--out", type=Path, default=Path("figures"),
                   help="directory for the PNG and PDF files (default: ./figures)")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our tqdm bar counts jobs; transformers' weight-loading bars (also in spawned workers,
    # which inherit the environment) are noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted: finished subsets are kept; run the same command to resume",
              file=sys.stderr)
        return 130
    except (KeyError, ValueError, BankMismatch, DataError, MissingDependency) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"tdabench: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
