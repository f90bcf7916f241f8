"""The ``tdabench`` command line: ``list``, ``groundtruth``, ``run`` and the rest.

Every command checks its inputs (:mod:`tdabench.checks`) before it computes anything; a
user error (:class:`tdabench.errors.UserError`) is printed in one line. Heavy modules (torch,
scipy) are imported only when a command runs, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from tdabench import registry
from tdabench.errors import ConfigError, UserError


def _assignments(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"expected FIELD=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where fine-tunes and method phases run: auto = CUDA when torch sees a GPU; "
                        "cuda = every GPU (one ground-truth worker each, --workers ignored); "
                        "cuda:N = GPU N (default: %(default)s)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="fp32, or bf16 autocast (CUDA only; its banks are kept apart) (default: %(default)s)")
    p.add_argument("--micro-batch", type=int, default=0, metavar="K",
                   help="fine-tune in pieces of K examples with gradient accumulation (same step as "
                        "the recipe's batch); 0 = whole batches, halved on CUDA out-of-memory")


def _device(args: argparse.Namespace):
    from tdabench import device

    return device.resolve(args.device, args.dtype, args.micro_batch)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _compute(args: argparse.Namespace):
    """The command's :class:`~tdabench.device.Compute`: workers, executor and the whole device."""
    from tdabench.device import Compute

    return Compute(args.workers, args.executor, args.address, _device(args))


def _path(text: str) -> Path:
    """A path argument; an empty one is refused (``Path("")`` is the working directory, where
    ``--results-dir ""`` wrote records without a word)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _finite_nonnegative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _validate(args: argparse.Namespace, evaluates: bool = False, trains: bool = False):
    """Check and resolve the command's task, preset, spec overrides, method, config and results
    directory before any compute (:func:`tdabench.checks.validate`), once; fills in
    ``args.preset`` and returns the :class:`~tdabench.checks.Resolved` run."""
    from tdabench import checks

    method = getattr(args, "method", None)
    checked = checks.validate(
        args.task, args.preset, _assignments(args.spec_overrides), method,
        _method_config(args) if method else None, getattr(args, "results_dir", None), evaluates,
        trains, {k: v.split(",") for k, v in _assignments(getattr(args, "grid", [])).items()})
    args.preset = checked.preset
    cores = os.cpu_count() or 1
    workers = getattr(args, "workers", 1)
    if workers > cores:
        checked.warnings.append(f"--workers {workers} is more than this machine's {cores} cores: "
                                f"each worker runs one torch thread, so more than {cores} only "
                                f"share the cores (use --workers {cores})")
    bank = getattr(args, "bank", None)
    if bank is not None and Path(bank).exists() and not Path(bank).is_dir():
        raise UserError(f"--bank {bank} is a file; a bank is a directory: name a new or existing "
                        "bank directory")
    for warning in checked.warnings:
        print(f"tdabench: warning: {warning}", file=sys.stderr)
    return checked


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="task name (see `tdabench list`)")
    p.add_argument("--preset", default=None,
                   help="task preset (default: tiny, or the task's only preset)")
    p.add_argument("--set", dest="spec_overrides", action="append", default=[],
                   metavar="FIELD=VALUE",
                   help="override a spec field, e.g. --set groundtruth.n_subsets=64")
    p.add_argument("--workers", type=_positive_int, default=min(2, os.cpu_count() or 1),
                   help="ground-truth worker processes, one torch thread each (default: %(default)s)")
    p.add_argument("--bank", type=_path, default=None,
                   help="ground-truth bank directory (default: under $TDABENCH_CACHE)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where fine-tunes run (ground truth, a method's own banks): local worker "
                        "processes or Ray (pip install 'tdabench[ray]'; default: %(default)s)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to use (e.g. auto, HOST:6379); default: start a local Ray "
                        "instance with --workers CPUs")
    _add_device_args(p)


def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="method name (see `tdabench list`)")
    _add_task_args(p)
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="the method's seed (default: 0)")
    p.add_argument("--config", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a method config field, e.g. --config similarity=cosine")
    p.add_argument("--checkpoint", default=None, metavar="VALUE",
                   help="the method's `checkpoint` config field (same as --config checkpoint=VALUE): "
                        "a trained model's directory or hub id for airrep; where gradients are taken "
                        "(base, pool, half, subset, trajectory) for the gradient methods")


def _add_correlation_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--correlation", choices=["spearman", "kendall", "pearson"], default="spearman",
                   help="correlation over subsets in the LDS (default: spearman); records made with "
                        "another correlation are never ranked together")


def cmd_list(args: argparse.Namespace) -> None:
    name = args.method or args.name
    if name:
        _describe(name)
        return
    print("tasks (jsonl:PATH runs your own data):")
    for name in registry.task_names():
        task = registry.get_task(name)
        where = "needs the Hugging Face hub" if task.needs_hub else "offline"
        if task.optional:
            where += f"; optional: {task.optional}"
        print(f"  {name:<14} {task.description}")
        print(f"  {'':<14} source labels: {task.labels or 'n/a'}; {where}")
        for preset, spec in sorted(task.presets.items()):
            d, g = spec.data, spec.groundtruth
            size = f"pool {d.n_pool}, targets {d.n_targets}" if d.n_pool else "pool and targets as published"
            truth = (f"{g.n_subsets} subsets x {g.n_seeds} seed(s) of {g.fraction:.0%}"
                     if g.source == "finetune" else f"{g.n_subsets or 'all'} published subsets")
            print(f"  {'':<14} preset {preset}: {size}; {truth}; model {spec.model.name or spec.model.init}")
    print("methods (`tdabench list METHOD` shows its config):")
    for name in registry.method_names():
        cls = registry.get_method(name)
        module = sys.modules.get(cls.__module__)  # a class made in a notebook cell has none
        doc = ((module.__doc__ if module else None) or cls.__doc__ or "").strip()
        print(f"  {name:<14} {doc.splitlines()[0] if doc else ''}")


def _describe(name: str) -> None:
    """A method's config fields (default, type and range, help), or a task's presets."""
    from tdabench.typed import describe_fields

    if name not in registry.method_names():
        if name in registry.task_names():
            task = registry.get_task(name)
            print(f"{name}: {task.description}; presets: {', '.join(sorted(task.presets))} "
                  "(see `tdabench list`)")
            return
        registry.get_method(name)  # raises UnknownName listing the valid methods
    cls = registry.get_method(name)
    doc = (sys.modules[cls.__module__].__doc__ or "").strip()
    print(doc.splitlines()[0] if doc else name)
    print("config fields (--config FIELD=VALUE):")
    for field, default, kind, help_ in describe_fields(cls.Config):
        print(f"  {field:<18} default {default:<12} {kind}")
        if help_:
            print(f"  {'':<18} {help_}")
    if cls.GRID:
        grid = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in cls.GRID.items())
        print(f"tuning grid (`tdabench tune`, `tdabench run --tune`): {grid}")


def _subset_slice(text: str) -> slice:
    """``A:B`` (either end may be left out) as a slice of subset indices."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() or not p.strip() for p in parts):
        raise argparse.ArgumentTypeError(f"expected a subset range A:B (e.g. 0:50), got {text!r}")
    start, stop = (int(p) if p.strip() else None for p in parts)
    if start is not None and stop is not None and start >= stop:
        raise argparse.ArgumentTypeError(f"the subset range {text!r} is empty: A:B needs A < B (e.g. 0:50)")
    return slice(start, stop)


def cmd_groundtruth(args: argparse.Namespace) -> None:
    from tdabench import runner  # torch and scipy load when a command runs, not for --help

    bank = runner.groundtruth(_validate(args), _compute(args), args.bank, args.subsets)
    m, r, t = bank.losses.shape
    if not bank.complete:
        import numpy as np

        done = int(np.isfinite(bank.losses).all(axis=2).sum())
        print(f"part of the ground truth for {args.task}/{args.preset}: {done} of {m * r} "
              f"fine-tunes at {bank.path}; build the others (e.g. other --subsets ranges on "
              "other machines) and join the parts with `tdabench merge-banks`")
        return
    labels = bank.labels()
    print(f"ground truth for {args.task}/{args.preset}: {m} subsets x {r} seeds x {t} targets "
          f"at {bank.path}")
    print(f"  mean target loss {-labels.mean():.4f}; mean spread over subsets "
          f"(std per target) {labels.std(axis=1).mean():.4f}")


def cmd_plan(args: argparse.Namespace) -> None:
    from tdabench.groundtruth import plan

    resolved = _validate(args)
    if args.method:  # what the method costs at the task's size, not the bank
        from tdabench import costs
        from tdabench.device import Compute

        compute = Compute(args.workers, device=_device(args))
        print(costs.render(costs.estimate(resolved, compute, seed=args.seed)))
        return
    estimate = plan.plan(resolved.spec, resolved.task.load, args.subsets, args.seeds, args.workers,
                         args.fine_tunes, _device(args))
    print(plan.render(estimate))


def cmd_merge_banks(args: argparse.Namespace) -> None:
    from tdabench.groundtruth.merging import MERGE_ATOL, merge_banks

    atol = MERGE_ATOL if args.atol is None else args.atol
    report = merge_banks(args.sources, args.into, atol)
    print(f"merged {len(report.sources)} bank(s) into {report.into}: {report.found} loss files, "
          f"{report.unique} distinct fine-tunes of {report.total}, {report.written} written")
    if report.duplicates:
        print(f"  {report.duplicates} fine-tune(s) found in more than one bank, kept once; largest "
              f"difference between copies {report.max_abs_diff:.3g} (atol {atol:g})")
    for note in report.notes:
        print(f"  note: {note}")
    if not report.complete:
        print(f"  {report.total - report.unique} fine-tune(s) still missing: run `tdabench "
              f"groundtruth ... --bank {report.into}` to compute them")


def cmd_run(args: argparse.Namespace) -> None:
    from tdabench import runner  # torch and scipy load when a command runs, not for --help

    resolved = _validate(args, evaluates=True)
    tuning = None
    if args.tune:
        resolved, tuning = _tune_first(args, resolved)
    record, path = runner.run_resolved(resolved, args.seed, _compute(args), args.results_dir, args.bank,
                                       args.group_score, args.correlation, tuning=tuning)
    print(runner.summary(record))
    print(f"record: {path}")


def _method_config(args: argparse.Namespace) -> dict[str, str]:
    config = _assignments(args.config)
    if args.checkpoint:
        config["checkpoint"] = args.checkpoint
    return config


def _declared_grid(method: str, config: dict[str, str]) -> dict[str, list]:
    """The method's declared tuning grid less the fields the user set; UserError when nothing is
    left to tune."""
    grid = {k: v for k, v in registry.get_method(method).GRID.items() if k not in config}
    if not grid:
        raise UserError(f"method {method!r} declares nothing to tune" + (
            f" besides the fields you set ({', '.join(sorted(config))})" if config else "")
            + ": run it without --tune, or give --grid FIELD=V1,V2 to `tdabench tune`")
    return grid


def _tune_first(args: argparse.Namespace, resolved):
    """``tdabench run --tune``: the declared grid searched on the tuning subsets (its estimated
    cost printed first), then the winner resolved; returns it and how it was chosen."""
    from tdabench import costs, runner

    grid = _declared_grid(args.method, _method_config(args))
    n = math.prod(len(v) for v in grid.values())
    estimate = costs.estimate(resolved, _compute(args), seed=args.seed)
    print(f"tuning {args.method} on {resolved.spec.task}/{resolved.preset}'s tuning subsets over {n} "
          f"configuration(s) of {grid}: about {estimate.total_s * n / 60:,.1f} min on this machine "
          "(plan --method's estimate of one run, times the grid), then the winner is scored", flush=True)
    trials, csv = runner.tune(resolved, grid, args.seed, _compute(args), args.bank, args.correlation,
                              args.results_dir)
    chosen = {field: trials[0][field] for field in grid}
    print(f"chosen: {chosen} (tuning LDS {trials[0]['tuning_lds']:+.4f}); trials: {csv}", flush=True)
    from tdabench.protocol import TUNING_BUDGET, TUNING_VERSION

    tuning = {"tuned": list(grid), "subsets": f"{resolved.spec.task}/{resolved.preset} bank, its "
              f"{trials[0]['n_tuning_subsets']} tuning subsets (m % 5 == 0); the test subsets were never "
              "scored while tuning", "grid": grid, "chosen": chosen, "csv": [str(csv)],
              "protocol": {"version": TUNING_VERSION, "budget": TUNING_BUDGET}}
    return resolved.with_config(chosen), tuning


def cmd_tune(args: argparse.Namespace) -> None:
    from tdabench import runner  # torch and scipy load when a command runs, not for --help

    resolved = _validate(args, evaluates=True)
    grid = {key: [v.strip() for v in values.split(",")] for key, values in _assignments(args.grid).items()}
    grid = grid or _declared_grid(args.method, _method_config(args))
    trials, path = runner.tune(resolved, grid, args.seed, _compute(args), args.bank, args.correlation,
                               args.results_dir)
    print(f"{args.method} on {args.task}/{args.preset}: LDS on the {trials[0]['n_tuning_subsets']} "
          "tuning subsets (the test subsets are not touched)")
    for trial in trials:
        setting = " ".join(f"{k}={trial[k]}" for k in grid)
        print(f"  {trial['tuning_lds']:+.4f} [{trial['ci_low']:+.4f}, {trial['ci_high']:+.4f}]  {setting}")
    best = " ".join(f"--config {k}={trials[0][k]}" for k in grid)
    print(f"trials: {path}\nbest: tdabench run --method {args.method} --task {args.task} "
          f"--preset {args.preset} {best}")


def cmd_compare(args: argparse.Namespace) -> None:
    from tdabench.reporting import leaderboard
    from tdabench.reporting.compare import compare, pick_pair

    task = _task_with_preset(args.task)
    selection = leaderboard.load(args.results or _default_roots(), [task], args.spec)
    presets = sorted({r.preset for r in selection.records})
    if len(presets) > 1:
        raise UserError(f"records of {task} at several presets ({', '.join(presets)}); name one: "
                        f"--task {task}/{presets[0]}")
    entry_a, entry_b, notes = pick_pair(selection, args.a, args.b)
    for note in notes:
        print(f"tdabench: {note}", file=sys.stderr)
    out = compare(entry_a.path, entry_b.path, args.n_boot)
    print(f"{args.a} - {args.b} on {task}: LDS {out['lds_a']:+.4f} - {out['lds_b']:+.4f} "
          f"= {out['lds_a'] - out['lds_b']:+.4f} (paired bootstrap)")
    for key in ("over_targets", "over_subsets"):
        if key in out:
            t = out[key]
            print(f"  {key.replace('_', ' '):<13} 95% CI [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]  "
                  f"p = {t['p_value']:.4f}")


def _task_with_preset(task: str) -> str:
    """``task`` as ``task/preset``: a bare registered task name takes the task's default preset
    (tiny, or its only one), as ``tdabench run`` does; ``jsonl:PATH`` is the name its records
    carry; anything else is kept as given."""
    if task.startswith("jsonl:"):  # records name the task by its file's stem, as the run did
        task = registry.get_task(task).name
    if "/" in task or task not in registry.task_names():
        return task
    return f"{task}/{registry.get_task(task).default_preset()}"


def cmd_train(args: argparse.Namespace) -> None:
    from tdabench import runner  # torch and scipy load when a command runs, not for --help

    path = runner.train(_validate(args, trains=True), args.seed, _compute(args))
    print(f"trained {args.method} for {args.task}/{args.preset}: {path}")


def _default_roots() -> list[Path]:
    """The record trees read when no --results is given: the reference set (``./results``,
    where it exists) and the user's results (where ``tdabench run`` writes)."""
    from tdabench.record import REFERENCE_RESULTS, user_results_dir

    roots = [root for root in (REFERENCE_RESULTS, user_results_dir()) if root.is_dir()]
    return roots or [REFERENCE_RESULTS]


def _load_records(args: argparse.Namespace):
    from tdabench.reporting import leaderboard

    selection = leaderboard.load(args.results or _default_roots(), args.task, args.spec)
    for warning in selection.warnings():
        print(f"tdabench: warning: {warning}", file=sys.stderr)
    return selection

def cmd_leaderboard(args: argparse.Namespace) -> None:
    from tdabench.reporting import leaderboard

    selection = _load_records(args)
    text = leaderboard.render(leaderboard.table(selection), args.format, selection)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text, end="")

def cmd_plot(args: argparse.Namespace) -> None:
    from tdabench.reporting import plots

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file; figures go into a directory: name one")
    for path in plots.plot_all(_load_records(args), args.out):
        print(path)

def _add_results_arg(p: argparse.ArgumentParser, help_: str, many: bool = True) -> None:
    """``--results-dir DIR...`` into ``args.results``; ``--results`` is the old spelling.
    ``many=False`` (a command with positionals): one DIR per flag, repeatable, so that
    ``--results-dir results A B`` leaves A and B to the positionals."""
    nargs = {"nargs": "+", "action": "extend"} if many else {"action": "append"}
    p.add_argument("--results-dir", dest="results", type=_path, default=[], metavar="DIR",
                   help=help_, **nargs)
    p.add_argument("--results", dest="results", type=_path, default=[], help=argparse.SUPPRESS,
                   **nargs)


def _add_records_args(p: argparse.ArgumentParser) -> None:
    _add_results_arg(p, "directory trees of result records, merged (default: ./results where it "
                        "exists and the user results, $TDABENCH_RESULTS or $TDABENCH_CACHE/results)")
    p.add_argument("--task", nargs="+", action="extend", default=[], metavar="TASK",
                   help="only these tasks (TASK or TASK/PRESET; default: all)")
    p.add_argument("--spec", nargs="+", action="extend", default=[], metavar="HASH",
                   help="show this spec hash (or a prefix) of its task instead of the newest")

def _reproduce_configs(args: argparse.Namespace) -> tuple[dict[str, dict], dict[str, dict]]:
    """The configs file's method overrides for ``args.preset`` (its ``_by_preset[PRESET]``
    entries replace a method's top-level one) and how they were tuned (``_tuned``)."""
    import json

    given = json.loads(args.configs.read_text()) if args.configs.exists() else {}
    configs = {k: v for k, v in given.items() if not k.startswith("_")}
    return {**configs, **given.get("_by_preset", {}).get(args.preset, {})}, given.get("_tuned", {})


def _check_reproduce(args: argparse.Namespace) -> None:
    """Check reproduce's tasks, methods, configs file and results directory before any compute."""
    from tdabench import checks, record

    configs, _ = _reproduce_configs(args)
    for method in args.method or registry.method_names():
        if method in configs or args.method:
            checks.check_method(method, configs.get(method))
    for task in args.task:
        registry.get_task(task).spec(args.preset)
    record.check_writable(args.results_dir)


def cmd_reproduce(args: argparse.Namespace) -> None:
    from tdabench.device import Compute

    _check_reproduce(args)
    configs, tuned = _reproduce_configs(args)
    from tdabench.reproduce import reproduce

    written = reproduce(args.preset, args.task or None, args.method or None, configs,
                        args.results_dir, Compute(args.workers, device=_device(args)), tuned)
    print(f"{len(written)} new record(s) under {args.results_dir}")


def cmd_selftest(args: argparse.Namespace) -> None:
    from tdabench import selftest

    report = selftest.run(_device(args), args.task, args.method)
    print(report.render())
    if not report.passed:
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdabench", description="Benchmark training data attribution methods on LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list tasks, presets and methods; a method's config fields")
    p.add_argument("name", nargs="?", default=None, metavar="METHOD",
                   help="show this method's config fields, defaults, choices and help")
    p.add_argument("--method", default=None, help="same as the positional METHOD")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("groundtruth", help="build (or resume) a task's counterfactual ground truth")
    _add_task_args(p)
    p.add_argument("--subsets", type=_subset_slice, default=None, metavar="A:B",
                   help="build only subsets A..B-1 (e.g. 0:50), for a bank built in parts on "
                        "several machines; join the parts with `tdabench merge-banks`")
    p.set_defaults(func=cmd_groundtruth)

    p = sub.add_parser("plan", help="time a few fine-tunes here and estimate a bank's cost")
    p.add_argument("--task", required=True, help="task name (see `tdabench list`)")
    p.add_argument("--preset", default=None,
                   help="task preset (default: tiny, or the task's only preset)")
    p.add_argument("--set", dest="spec_overrides", action="append", default=[],
                   metavar="FIELD=VALUE", help="override a spec field")
    p.add_argument("--subsets", type=_positive_int, default=None, metavar="M",
                   help="subsets in the bank (default: the spec's groundtruth.n_subsets)")
    p.add_argument("--seeds", type=_positive_int, default=None, metavar="R",
                   help="training seeds per subset (default: the spec's groundtruth.n_seeds)")
    p.add_argument("--workers", type=_positive_int, default=min(2, os.cpu_count() or 1),
                   help="workers the wall time is estimated for (default: %(default)s)")
    p.add_argument("--fine-tunes", type=_positive_int, default=2, metavar="K",
                   help="fine-tunes to time (default: %(default)s)")
    p.add_argument("--method", default=None,
                   help="estimate this method's time and memory at the task's size instead of the "
                        "bank's: two short timed runs on cuts of the task, extrapolated")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="the method's seed (default: 0)")
    p.add_argument("--config", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a method config field (with --method)")
    p.add_argument("--checkpoint", default=None, metavar="VALUE",
                   help="the method's `checkpoint` config field (with --method)")
    _add_device_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("merge-banks", help="join ground-truth banks built in parts into one")
    p.add_argument("sources", nargs="+", type=_path, metavar="SRC", help="bank directories")
    p.add_argument("--into", type=_path, required=True, metavar="DST",
                   help="the merged bank (created, or completed if it exists)")
    p.add_argument("--atol", type=_finite_nonnegative, default=None,
                   help="largest difference tolerated between two copies of one fine-tune's "
                        "losses (default: 1e-4)")
    p.set_defaults(func=cmd_merge_banks)

    p = sub.add_parser("train", help="train a learned method (e.g. airrep) for a task")
    _add_method_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run one method on one task and write its result record")
    _add_method_args(p)
    p.add_argument("--results-dir", type=_path, default=None,
                   help="where result records go (default: $TDABENCH_RESULTS, else "
                        "$TDABENCH_CACHE/results; the reference set ./results is written only by "
                        "`tdabench reproduce` or when named here)")
    p.add_argument("--group-score", default=None, metavar="POOLING",
                   help="force this group score for any method: a pooling of "
                        "tdabench.method.pooling.POOLINGS (sum, attention as AirRep trains, "
                        "attention-eval as its paper evaluates; default: the method's own, else the sum)")
    p.add_argument("--tune", action="store_true",
                   help="first search the method's declared grid on this task's tuning subsets, "
                        "then score the winner (its estimated cost is printed before it starts)")
    _add_correlation_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tune", help="grid search of a method's config on the bank's tuning subsets only")
    _add_method_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                   help="config values to try, e.g. --grid similarity=dot,cosine (repeatable; "
                        "default: the method's declared grid, `tdabench list METHOD`)")
    p.add_argument("--results-dir", type=_path, default=None,
                   help="the trials go to RESULTS_DIR/TASK/PRESET/tuning/METHOD.csv (default: "
                        "the user results, as for run)")
    _add_correlation_arg(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("compare", help="paired bootstrap test of two methods' LDS on the same bank")
    p.add_argument("a", help="method (or leaderboard label) A")
    p.add_argument("b", help="method (or leaderboard label) B")
    p.add_argument("--task", required=True, help="TASK or TASK/PRESET")
    _add_results_arg(p, "a directory tree of result records, repeatable (default: as for "
                        "leaderboard)", many=False)
    p.add_argument("--spec", nargs="+", action="extend", default=[], metavar="HASH",
                   help="the spec hash (or prefix) to compare on (default: the newest)")
    p.add_argument("--n-boot", type=_positive_int, default=2000, help="bootstrap resamples (default: 2000)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("reproduce", help="every method on every offline task of a preset (resumes)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--task", nargs="+", action="extend", default=[], help="only these tasks")
    p.add_argument("--method", nargs="+", action="extend", default=[], help="only these methods")
    p.add_argument("--configs", type=_path, default=Path("results/configs.json"),
                   help="method config overrides, JSON {method: {field: value}} (default: %(default)s)")
    p.add_argument("--results-dir", type=_path, default=Path("results"),
                   help="where the reference records go (default: %(default)s)")
    p.add_argument("--workers", type=_positive_int, default=min(2, os.cpu_count() or 1))
    _add_device_args(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("selftest", help="a reduced end-to-end on a device, checked against the CPU")
    p.add_argument("--task", default="chatterbot",
                   help="the task whose data (at micro size) the check uses (default: %(default)s)")
    p.add_argument("--method", default="graddot",
                   help="the method whose scores are compared (default: %(default)s)")
    _add_device_args(p)
    p.set_defaults(func=cmd_selftest)

    p = sub.add_parser("leaderboard", help="tabulate result records: methods x tasks, best marked")
    _add_records_args(p)
    p.add_argument("--format", choices=["markdown", "csv", "latex"], default="markdown",
                   help="output format (default: markdown)")
    p.add_argument("--out", type=_path, default=None, help="write to this file (default: stdout)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("plot", help="figures from result records: LDS, LDS vs time, per-target LDS")
    _add_records_args(p)
    p.add_argument("--out", type=_path, default=Path("figures"),
                   help="directory for the PNG and PDF files (default: ./figures)")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a UserError is printed in one line (exit 2), an interrupt too (130);
    any other exception is a bug and keeps its traceback."""
    try:
        args = build_parser().parse_args(argv)
        # Our bar counts jobs; transformers' weight-loading bars (also in spawned workers,
        # which inherit the environment) are noise.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        args.func(args)
    except KeyboardInterrupt:
        print("tdabench: interrupted; finished fine-tunes are kept: run the same command to "
              "resume", file=sys.stderr)
        return 130
    except UserError as err:
        print(f"tdabench: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
