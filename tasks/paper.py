"""The AirRep paper's four benchmarks: ``flan``, ``alpaca``, ``tulu``, ``safe`` (alias ``saferlhf``).

Preset ``paper`` loads the published benchmark data and ground truth of the dataset
``sunweiwei/airrep-test`` on the Hugging Face hub: per benchmark a folder (``flan/``,
``alpaca/``, ``tulu/``, ``safe/``) with ``train.jsonl`` (the pool), ``test.jsonl`` (the targets)
and ``lds.jsonl`` (one row per subset: ``train_subset``, indices into train.jsonl, and one loss
per test example from Qwen2.5-0.5B fine-tuned on that subset, under ``test_loss`` as the
authors' ``scripts/04_evaluate.py`` reads it, or ``test_score`` as the dataset card shows it).
The losses are imported as a ground-truth bank, as many subsets as the file holds, so methods
are scored against the paper's own ground truth without any retraining. The preset also carries
the paper's fine-tuning recipe, so that a user with GPUs can regenerate or extend the ground
truth (``--set groundtruth.source=finetune --set groundtruth.n_subsets=100``).

Files come from the hub at a commit, or from a local copy of the dataset with ``--set
data.options.path=DIR`` (DIR/flan/train.jsonl, ...). ``data.options.revision`` names the commit;
left empty (the default) or given as a branch or tag (``main``), it is resolved to the commit it
points at when the command is validated (:func:`pin`, which prints ``sunweiwei/airrep-test main
pinned to <commit>``), so the spec, its hash, the bank and the record hold the commit, never a
name that moves; a second run with ``--set data.options.revision=<commit>`` is the same spec and
reuses the bank. The revision and the sha256 of every file read are the bank's provenance (its
manifest's ``model_fingerprint``), so a changed file never reuses a bank.

Records become examples as the authors' ``format_item`` (``scripts/04_evaluate.py``) reads them;
see :func:`to_example`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tdabench import data
from tdabench.data import DataError
from tdabench.hub import is_commit, resolve_commit
from tdabench.spec import DataSpec, Example, FinetuneRecipe, GroundTruthSpec, ModelSpec, TaskSpec, override
from tdabench.store import sha256_file
from tdabench.task import PublishedGroundTruth, Task, TaskData

REPO = "sunweiwei/airrep-test"
# The AirRep paper's target-LM recipe (arXiv 2505.18513): Qwen2.5-0.5B, full fine-tune, AdamW
# 2e-5 constant, batch 16, 2 epochs, grad clip 1.0, 512 tokens, bf16; 100 subsets, one seed each.
PAPER_MODEL = ModelSpec(
    init="pretrained",
    name="Qwen/Qwen2.5-0.5B",
    max_prompt_tokens=256,
    max_response_tokens=256,
    dtype="bfloat16",
    trainable="all",
)
PAPER_RECIPE = FinetuneRecipe(lr=2e-5, batch_size=16, epochs=2, grad_clip=1.0)

FILES = ("train.jsonl", "test.jsonl", "lds.jsonl")
# What the authors publish as their evaluation's figure, in their words: github.com/sunnweiwei/AirRep
# (commit f7f2ff1) scripts/README.md, stage 4, 04_evaluate.py on their flan-trained AirRep "Prints LDS
# Spearman correlation (expected: ~0.21 for flan)"; their README evaluates AirRep-Flan-Small with that
# script. Records carry it beside the measured figure.
PUBLISHED_LDS = {"flan": {"airrep": "~0.21 (the authors' scripts/README.md: 04_evaluate.py on their "
                                     "flan-trained AirRep, 'expected: ~0.21 for flan')"}}
PROMPT_FIELDS = ("inputs", "prompt", "instruction")  # format_item's order: the first present wins
RESPONSE_FIELDS = ("response", "targets", "output")
SOURCE_FIELDS = ("task", "source", "_task_name", "category", "dataset")
LOSS_FIELDS = ("test_loss", "test_score")
DATA_PROMPT_WORDS = 100  # format_item caps a data[0] prompt at 100 words


def _text(row: dict, field: str) -> str | None:
    """``row[field]`` if present and not null (it must then be a string)."""
    value = row.get(field)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"field {field!r} is {type(value).__name__}, expected a string")
    return value


def _messages(row: dict) -> tuple[str | None, str | None]:
    """The first user and assistant turns of a ``messages`` list (chat records)."""
    turns = {m.get("role"): m.get("content") for m in reversed(row.get("messages") or [])
             if isinstance(m, dict)}
    return turns.get("user"), turns.get("assistant")


def prompt_response(row: dict) -> tuple[str, str]:
    """(prompt, response) of one record, as ``format_item`` of the authors' evaluation script
    takes them (their trainer's ``format_item`` is the same):

    1. ``data`` = [prompt, response]: the prompt's first 100 words (joined by single spaces);
    2. ``input``: ``instruction + " " + input`` (an absent instruction counts as "");
    3. the first present of ``inputs``, ``prompt``, ``instruction`` replaces either, so a record
       with both ``instruction`` and ``input`` (alpaca's shape) keeps the instruction only;
    4. response: the first present of ``response``, ``targets``, ``output``, else ``data[1]``.

    Departures, for records the authors' script cannot read the same way: a null field counts as
    absent (``datasets`` fills absent columns with null; the script would fail on them); a record
    with neither prompt nor response fields falls back to the first user/assistant turns of
    ``messages``; a record still without a prompt or a response is refused (the script would
    encode an empty string).
    """
    prompt = response = None
    if row.get("data") is not None:
        pair = row["data"]
        if not (isinstance(pair, list) and len(pair) >= 2 and all(isinstance(t, str) for t in pair[:2])):
            raise ValueError("field 'data' must be a list [prompt, response] of strings")
        prompt, response = " ".join(pair[0].split()[:DATA_PROMPT_WORDS]), pair[1]
    if _text(row, "input") is not None:
        prompt = (_text(row, "instruction") or "") + " " + row["input"]
    prompt = next((v for f in PROMPT_FIELDS if (v := _text(row, f)) is not None), prompt)
    response = next((v for f in RESPONSE_FIELDS if (v := _text(row, f)) is not None), response)
    if prompt is None and response is None:
        prompt, response = _messages(row)
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError("no prompt/response fields (expected data, one of "
                         f"{PROMPT_FIELDS + ('input',)} and one of {RESPONSE_FIELDS}, or messages)")
    return prompt, response


def to_example(row: dict, index: int, default_source: str) -> Example:
    """One record as an Example (:func:`prompt_response`). Source: the first of ``task``,
    ``source``, ``_task_name``, ``category``, ``dataset``, else the benchmark."""
    prompt, response = prompt_response(row)
    source = next((str(row[f]) for f in SOURCE_FIELDS if row.get(f) not in (None, "")),
                  default_source)
    return Example(f"{default_source}-{index:06d}", prompt, response, source)


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """All rows of a JSONL file with their line numbers; the first malformed line is reported."""
    rows, errors = data.read_jsonl(path)
    if errors:
        lineno, problem = errors[0]
        raise DataError(f"{path}:{lineno}: {problem}")
    return rows


def read_examples(path: Path, source: str) -> list[Example]:
    out = []
    for i, (lineno, row) in enumerate(read_jsonl(path)):
        try:
            out.append(to_example(row, i, source))
        except ValueError as err:
            raise DataError(f"{path}:{lineno}: {err}") from err
    return out


def pin(spec: TaskSpec) -> TaskSpec:
    """``spec`` with ``data.options.revision`` resolved to the dataset's commit on the hub (an
    empty revision is ``main``), and the target LM's ``model.revision`` to the model's (it
    fine-tunes when a method needs the target LM or the ground truth is regenerated); unchanged
    where each is a commit already. A local copy of the data (``data.options.path``) pins
    nothing: it reads no hub (a local model directory as ``model.name`` is read as it is)."""
    options, model = spec.data.options, spec.model
    if options.get("path"):
        return spec
    pinned = {}
    if not is_commit(options.get("revision")):
        pinned["data.options.revision"] = resolve_commit(
            REPO, "dataset", options.get("revision"),
            fix="with no hub, pass --set data.options.revision=<40-hex commit> (its files in the local hub "
                "cache) or a local copy: --set data.options.path=DIR")
    if not Path(model.name).expanduser().exists() and not is_commit(model.revision):
        pinned["model.revision"] = resolve_commit(
            model.name, "model", model.revision,
            fix="with no hub, pass --set model.revision=<40-hex commit> (its files in the local hub cache)")
    return override(spec, pinned) if pinned else spec


def pinned_revision(options: dict) -> str:
    """The dataset commit to read from the hub: ``options['revision']``, which must be a full
    commit hash (:func:`pin` makes it one when a command is validated)."""
    revision = options.get("revision")
    if not is_commit(revision):
        raise DataError(f"data.options.revision={revision!r} is not a commit hash (40 hex digits): a "
                        "branch or tag can move, so the ground truth would not be pinned; run through "
                        "tdabench's commands (they pin it) or give the commit")
    return revision


def fetch(benchmark: str, filename: str, options: dict) -> Path:
    """``benchmark/filename`` from a local copy (``options['path']``) or from the hub at the
    pinned revision."""
    if options.get("path"):
        path = Path(options["path"]) / benchmark / filename
        if not path.exists():
            raise DataError(f"{path} does not exist (data.options.path={options['path']!r} should "
                            f"hold {benchmark}/{', '.join(FILES)})")
        return path
    revision = pinned_revision(options)
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(REPO, f"{benchmark}/{filename}", repo_type="dataset",
                                    revision=revision))
    except Exception as err:  # offline, unknown revision, hub error: all end the same way
        raise DataError(
            f"could not fetch {benchmark}/{filename} of the dataset {REPO} at {revision} from the "
            f"Hugging Face hub ({type(err).__name__}: {str(err)[:200]}). Without hub access, copy "
            f"the dataset here and pass --set data.options.path=DIR, or use a task that needs no "
            "hub (`tdabench list` marks them)."
        ) from err


def subset_losses(row: dict, where: str) -> list:
    """A row's per-target losses, under ``test_loss`` or ``test_score`` (equal if both)."""
    found = {k: row[k] for k in LOSS_FIELDS if row.get(k) is not None}
    if not found:
        raise DataError(f"{where}: no losses (expected a list under 'test_loss' or 'test_score')")
    if len(found) == 2 and found["test_loss"] != found["test_score"]:
        raise DataError(f"{where}: 'test_loss' and 'test_score' disagree; keep one of them")
    loss = next(iter(found.values()))
    if not isinstance(loss, list):
        raise DataError(f"{where}: '{next(iter(found))}' must be a list of losses")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in loss):
        raise DataError(f"{where}: a test loss is null or not a finite number")
    return loss


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
        for m, (lineno, row) in enumerate(rows):
            where = f"{path}:{lineno}"
            subset, loss = row.get("train_subset"), subset_losses(row, where)
            if not isinstance(subset, list):
                raise DataError(f"{where}: expected a list 'train_subset'")
            idx = np.asarray(subset)
            if idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= len(data.pool)):
                raise DataError(f"{where}: train_subset must hold indices 0..{len(data.pool) - 1}")
            if len(loss) != len(data.targets):
                raise DataError(f"{where}: {len(loss)} test losses for {len(data.targets)} targets")
            membership[m, idx] = True
            losses[m] = loss
        options = spec.data.options
        origin = (f"local copy {options['path']}" if options.get("path")
                  else f"revision {pinned_revision(options)}")
        files = {f: sha256_file(fetch(benchmark, f, options)) for f in FILES}
        return PublishedGroundTruth(membership, losses, f"{REPO}/{benchmark} {origin} sha256 {files}")

    spec = TaskSpec(
        task=benchmark, preset="paper",
        data=DataSpec(n_pool=0, n_targets=0, options={"revision": ""}),
        model=PAPER_MODEL, finetune=PAPER_RECIPE,
        groundtruth=GroundTruthSpec(n_subsets=0, fraction=0.0, n_seeds=1, source="published"))
    return Task(name=benchmark,
                description=f"AirRep paper benchmark ({REPO}/{benchmark}; Qwen2.5-0.5B ground "
                            "truth as published; needs the hub or a local copy)",
                presets={"paper": spec}, load=load, published_groundtruth=published,
                labels="source task or category of each record, else the benchmark",
                needs_hub=True, data_options=("path", "revision"), pin=pin,
                published_lds=PUBLISHED_LDS.get(benchmark, {}))


FLAN = make_task("flan")
ALPACA = make_task("alpaca")
TULU = make_task("tulu")
SAFE = make_task("safe")  # the dataset's folder and the card's name; ``saferlhf`` is an alias
