"""The AirRep paper's four benchmarks: ``flan``, ``alpaca``, ``tulu``, ``saferlhf``.

Preset ``paper`` loads the published benchmark data and ground truth of the dataset
``sunweiwei/airrep-test`` on the Hugging Face hub: per benchmark a folder with ``train.jsonl``
(the pool), ``test.jsonl`` (the targets) and ``lds.jsonl`` (one row per subset:
``train_subset``, indices into train.jsonl, and ``test_loss``, one loss per test example, from
Qwen2.5-0.5B fine-tuned on that subset). The losses are imported as a ground-truth bank, so
methods are scored against the paper's own ground truth without any retraining. The preset
also carries the paper's fine-tuning recipe, so that a user with GPUs can regenerate or extend
the ground truth (``--set groundtruth.source=finetune``).

Files come from the hub (``data.options.revision``, default ``main``), or from a local copy of
the dataset with ``--set data.options.path=DIR`` (DIR/flan/train.jsonl, ...). The sha256 of
every file read is part of the bank's data fingerprint, so a changed file never reuses a bank.

The raw sources named in the paper's code load through ``datasets`` with :func:`raw_examples`,
for building new pools.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tdabench import data
from tdabench.data import DataError
from tdabench.groundtruth import PublishedGroundTruth
from tdabench.spec import PAPER_MODEL, PAPER_RECIPE, DataSpec, Example, GroundTruthSpec, TaskSpec
from tdabench.store import sha256_file
from tdabench.task import Task, TaskData

REPO = "sunweiwei/airrep-test"
OFFLINE_TASKS = "chatterbot, bigbench or evalschat"
RAW_SOURCES = {
    "flan": "Muennighoff/flan",
    "alpaca": "yahma/alpaca-cleaned",
    "saferlhf": "PKU-Alignment/PKU-SafeRLHF-QA",
    "tulu": "allenai/tulu-v2-sft-mixture",
}
PROMPT_FIELDS = ("prompt", "inputs", "instruction", "question")
RESPONSE_FIELDS = ("response", "targets", "output", "answer")
SOURCE_FIELDS = ("task", "source", "_task_name", "category", "dataset")


def to_example(row: dict, index: int, default_source: str) -> Example:
    """Normalise one record of the formats these benchmarks use into an Example.

    Prompt: ``prompt`` | ``inputs`` | ``instruction`` (+ ``input`` when present) | ``question``
    | the first user turn of ``messages`` | ``data[0]``. Response likewise from ``response`` |
    ``targets`` | ``output`` | ``answer`` | the first assistant turn | ``data[1]``. Source: the
    first of ``task``, ``source``, ``_task_name``, ``category``, ``dataset``, else the benchmark.
    """
    prompt = next((row[f] for f in PROMPT_FIELDS if isinstance(row.get(f), str)), None)
    if prompt is not None and row.get("instruction") == prompt and row.get("input"):
        prompt = f"{prompt} {row['input']}"
    response = next((row[f] for f in RESPONSE_FIELDS if isinstance(row.get(f), str)), None)
    if isinstance(row.get("messages"), list):
        turns = {m.get("role"): m.get("content") for m in reversed(row["messages"])}
        prompt = prompt if prompt is not None else turns.get("user")
        response = response if response is not None else turns.get("assistant")
    if isinstance(row.get("data"), list) and len(row["data"]) >= 2:
        prompt = prompt if prompt is not None else row["data"][0]
        response = response if response is not None else row["data"][1]
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError("no prompt/response fields (expected one of "
                         f"{PROMPT_FIELDS + ('messages', 'data')} and {RESPONSE_FIELDS})")
    source = next((str(row[f]) for f in SOURCE_FIELDS if row.get(f) not in (None, "")),
                  default_source)
    return Example(f"{default_source}-{index:06d}", prompt, response, source)


def read_jsonl(path: Path) -> list[dict]:
    """All rows of a JSONL file; the first malformed line is reported with its number."""
    rows, errors = data.read_jsonl(path)
    if errors:
        lineno, problem = errors[0]
        raise DataError(f"{path}:{lineno}: {problem}")
    return [row for _, row in rows]


def read_examples(path: Path, source: str) -> list[Example]:
    out = []
    for i, row in enumerate(read_jsonl(path)):
        try:
            out.append(to_example(row, i, source))
        except ValueError as err:
            raise DataError(f"{path}:{i + 1}: {err}") from err
    return out


def fetch(benchmark: str, filename: str, options: dict) -> Path:
    """``benchmark/filename`` from a local copy (``options['path']``) or from the hub."""
    if options.get("path"):
        path = Path(options["path"]) / benchmark / filename
        if not path.exists():
            raise DataError(f"{path} does not exist (data.options.path={options['path']!r} should "
                            f"hold {benchmark}/train.jsonl, test.jsonl and lds.jsonl)")
        return path
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(REPO, f"{benchmark}/{filename}", repo_type="dataset",
                                    revision=options.get("revision", "main")))
    except Exception as err:  # offline, unknown revision, hub error: all end the same way
        raise DataError(
            f"could not fetch {benchmark}/{filename} of the dataset {REPO} from the Hugging Face "
            f"hub ({type(err).__name__}: {str(err)[:200]}). Without hub access, copy the dataset "
            f"here and pass --set data.options.path=DIR, or use an offline task ({OFFLINE_TASKS})."
        ) from err


def make_task(benchmark: str) -> Task:
    def load(spec: DataSpec) -> TaskData:
        pool = read_examples(fetch(benchmark, "train.jsonl", spec.options), benchmark)
        targets = read_examples(fetch(benchmark, "test.jsonl", spec.options), benchmark)
        targets = [Example(f"{benchmark}-test-{i:06d}", t.prompt, t.response, t.source)
                   for i, t in enumerate(targets)]
        return TaskData(pool=pool, targets=targets, warmup=[])

    def published(spec: TaskSpec, data: TaskData) -> PublishedGroundTruth:
        path = fetch(benchmark, "lds.jsonl", spec.data.options)
        rows = read_jsonl(path)
        membership = np.zeros((len(rows), len(data.pool)), dtype=bool)
        losses = np.empty((len(rows), len(data.targets)))
        for m, row in enumerate(rows):
            where = f"{path}:{m + 1}"
            subset, loss = row.get("train_subset"), row.get("test_loss")
            if not isinstance(subset, list) or not isinstance(loss, list):
                raise DataError(f"{where}: expected lists 'train_subset' and 'test_loss'")
            idx = np.asarray(subset)
            if idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= len(data.pool)):
                raise DataError(f"{where}: train_subset must hold indices 0..{len(data.pool) - 1}")
            if len(loss) != len(data.targets):
                raise DataError(f"{where}: {len(loss)} test losses for {len(data.targets)} targets")
            membership[m, idx] = True
            losses[m] = loss
        files = {f: sha256_file(fetch(benchmark, f, spec.data.options))
                 for f in ("train.jsonl", "test.jsonl", "lds.jsonl")}
        return PublishedGroundTruth(membership, losses, f"{REPO}/{benchmark} sha256 {files}")

    spec = TaskSpec(
        task=benchmark, preset="paper",
        data=DataSpec(n_pool=0, n_targets=0, options={"revision": "main"}),
        model=PAPER_MODEL, finetune=PAPER_RECIPE,
        groundtruth=GroundTruthSpec(n_subsets=100, fraction=0.0, n_seeds=1, source="published"))
    return Task(name=benchmark,
                description=f"AirRep paper benchmark ({REPO}/{benchmark}; Qwen2.5-0.5B ground "
                            "truth as published; needs the hub)",
                presets={"paper": spec}, load=load, published_groundtruth=published,
                labels="source task or category of each record, else the benchmark",
                needs_hub=True)


def raw_examples(benchmark: str, split: str = "train", limit: int | None = None,
                 **load_kwargs) -> list[Example]:
    """Examples of a benchmark's raw source (``RAW_SOURCES``) through ``datasets``."""
    import datasets

    ds = datasets.load_dataset(RAW_SOURCES[benchmark], split=split, **load_kwargs)
    rows = ds if limit is None else ds.select(range(min(limit, len(ds))))
    return [to_example(dict(row), i, benchmark) for i, row in enumerate(rows)]


FLAN = make_task("flan")
ALPACA = make_task("alpaca")
TULU = make_task("tulu")
SAFERLHF = make_task("saferlhf")
