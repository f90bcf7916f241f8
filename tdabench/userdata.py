"""Bring your own data: ``--task jsonl:PATH``.

Each line of the file is a JSON object with ``prompt`` and ``response`` (strings), and
optionally ``source`` (a label for recall; default ``"default"``), ``id`` and ``split``
(``"pool"``, ``"target"`` or ``"warmup"``). Without ``split`` fields, the records are split
by ``tdabench.data.balanced_split`` (seeded by ``data.seed``): 10% targets (at most 100) and
then the pool drawn round-robin over sources, the remaining 20% for warm-up. The whole file
is validated before anything runs: every malformed line is reported with its number. The
file's sha256 is part of the spec, so editing the file makes a new ground-truth bank.
"""

from __future__ import annotations

from pathlib import Path

from tdabench import presets
from tdabench.data import DataError, balanced_split, read_jsonl
from tdabench.spec import DataSpec, Example
from tdabench.store import sha256_file
from tdabench.task import Task, TaskData

SPLITS = {"pool", "target", "warmup"}


def read_records(path: Path) -> list[tuple[Example, str | None]]:
    """(example, split or None) for every line; raises DataError listing every bad line."""
    rows, errors = read_jsonl(path)
    records = []
    for lineno, row in rows:
        bad = [k for k in ("prompt", "response") if not isinstance(row.get(k), str) or not row[k]]
        if bad:
            errors.append((lineno, f"missing or empty string field(s) {bad}"))
            continue
        split = row.get("split")
        if split is not None and split not in SPLITS:
            errors.append((lineno, f"split must be one of {sorted(SPLITS)}, not {split!r}"))
            continue
        if "source" in row and not isinstance(row["source"], str):
            errors.append((lineno, f"source must be a string (a label), not {row['source']!r}; "
                                   "quote it, so that 1 and \"1\" are not two classes"))
            continue
        ex = Example(str(row.get("id", f"line{lineno:06d}")), row["prompt"], row["response"],
                     str(row.get("source", "default")))
        records.append((ex, split))
    errors = [f"line {lineno}: {problem}" for lineno, problem in sorted(errors)]
    if errors:
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        shown = "\n  ".join(errors[:20]) + more
        raise DataError(f"{path}: {len(errors)} malformed record(s); nothing was run:\n  {shown}")
    if not records:
        raise DataError(f"{path}: no records")
    first: dict[str, int] = {}
    repeated = []
    for lineno, (ex, _) in zip((n for n, _ in rows), records):
        if ex.id in first:
            repeated.append(f"{ex.id!r} (lines {first[ex.id]} and {lineno})")
        first.setdefault(ex.id, lineno)
    if repeated:
        raise DataError(f"{path}: {len(repeated)} duplicate id(s): {', '.join(repeated[:10])}"
                        + (" ..." if len(repeated) > 10 else ""))
    return records


def split_records(records: list[tuple[Example, str | None]], seed: int) -> TaskData:
    if all(split is not None for _, split in records):
        by = {s: [ex for ex, split in records if split == s] for s in SPLITS}
        if not by["pool"] or not by["target"]:
            raise DataError("the file's split fields give no pool or no target records")
        return TaskData(pool=by["pool"], targets=by["target"], warmup=by["warmup"])
    if any(split is not None for _, split in records):
        raise DataError("give a split for every record or for none")
    examples = [ex for ex, _ in records]
    n_targets = max(1, min(100, len(examples) // 10))
    n_pool = len(examples) - n_targets - len(examples) // 5  # the last 20% warm the model up
    return balanced_split(examples, n_pool, n_targets, seed)


def jsonl_task(path: str) -> Task:
    """A task over a user's JSONL file, with the ``tiny`` and ``small`` presets (the built-in
    tasks' models, recipes, token cuts and ground truth; a bank build warns, with numbers, when
    many responses are longer than the cut)."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise DataError(f"{file} is a directory; --task jsonl:PATH takes a .jsonl file")
    if not file.is_file():
        raise DataError(f"no such data file: {file} (expected --task jsonl:PATH to a .jsonl file)")
    records = read_records(file)
    digest = sha256_file(file)
    data = split_records(records, seed=0)

    def load(spec: DataSpec) -> TaskData:
        if sha256_file(file) != spec.options["sha256"]:
            raise DataError(f"{file} changed while in use")
        return split_records(records, spec.seed)

    name = f"jsonl-{file.stem}"  # used in file names; the spec carries the full path and hash
    spec = DataSpec(n_pool=len(data.pool), n_targets=len(data.targets), seed=0,
                    options={"path": str(file.resolve()), "sha256": digest})
    return Task(name=name, description=f"your data: {len(records)} records from {file}",
                presets={"tiny": presets.tiny(name, spec), "small": presets.small(name, spec)}, load=load)
