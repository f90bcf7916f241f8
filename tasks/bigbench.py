"""bigbench: a FLAN-style multi-task instruction mixture of BIG-bench's free-text tasks.

Data: the JSON tasks of the ``bigbench`` 1.0.0 source archive on the package index (358 MB,
``bigbench/benchmark_tasks/<task>[/<subtask>]/task.json``), downloaded at run time and verified
by sha256 (nothing is copied into this repository). ``pip download`` cannot fetch this archive
(it builds the archive's metadata, and pip then refuses its direct-URL dependency), so the file
is taken from the simple page of pip's configured index (:func:`tdabench.data.fetch_index_file`).
PyPI no longer serves 1.0.0 (on 2026-12-06 its page lists 0.0.1 only); the committed records
were made from a package mirror that still had it. Without such a mirror, place the archive
(``ARCHIVE_SHA256`` below) in ``<cache>/downloads/`` by hand. The task is therefore optional
(``Task.optional``): ``tdabench reproduce`` runs it only when named (``--task bigbench``), and
the leaderboard shows its records in tables of their own, labelled, out of the overview.
The archive is read once: the selected examples are cached as JSONL under
``<cache>/examples/``, keyed by the archive's sha256 and the selection settings below.

Selection (settings in ``data.options``; defaults of the presets in brackets):

* an example is an entry of a task.json ``examples`` list with a string ``input`` and a
  ``target`` that is a string or a list holding one (the first string is the response);
  multiple-choice-only examples (``target_scores`` without ``target``) and programmatic tasks
  (``task.py``, no ``task.json``) are skipped;
* the prompt is the example's own ``input``, stripped; the task's shared ``task_prefix`` and
  the few-shot input/output prefixes are not added (they would fill the 32-token prompt);
* short examples only: input of 1 to ``max_input_chars`` [160] characters, target of 1 to
  ``max_target_chars`` [80] characters;
* each distinct input once: task.json files are read in path order and an input already seen
  (in any task) is dropped;
* the source is the BIG-bench task (the folder under ``benchmark_tasks``; subtasks count as
  their task); a task needs ``min_per_task`` [100] such examples, and keeps at most
  ``max_per_task`` [150]: those with the smallest sha256 of ``task, input, target``, which does
  not depend on file order or seed (33 tasks qualify with the defaults).

Split (:func:`tdabench.data.balanced_split`, seeded by ``data.seed``): targets round-robin over
tasks, then the pool round-robin over tasks, and the rest, cut to ``max_warmup`` [4000], warms
up the from-scratch target LM, so the base model has seen the tasks' formats but never the pool
or the targets.

Presets: ``tiny`` (the from-scratch LM above) and ``small`` (SmolLM2-135M-Instruct, its top 2
blocks fine-tuned; :mod:`tdabench.presets`), on the same pool and targets; the small tier uses
no warm-up split. The selection's character limits were set for the tiny tier's 32-token cut;
``small`` cuts at 64 SmolLM2 tokens (the fractions cut are in :mod:`tdabench.presets`).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from tdabench import presets
from tdabench.data import (
    DataError,
    cap_per_source,
    fetch_index_file,
    load_with_options,
    selected_examples,
)
from tdabench.spec import DataSpec, Example
from tdabench.task import Task, TaskData

PACKAGE, VERSION = "bigbench", "1.0.0"
ARCHIVE = "bigbench-1.0.0.tar.gz"
ARCHIVE_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
TASKS_DIR = "/bigbench/benchmark_tasks/"
EXTRACT_FORMAT = 1  # bump when read_examples changes what it returns for the same settings

SELECTION = {"max_input_chars": 160, "max_target_chars": 80, "min_per_task": 100, "max_per_task": 150}
DEFAULT_OPTIONS = {**SELECTION, "max_warmup": 4000}


def first_string(target: Any) -> str | None:
    """The target itself if it is a string, else the first string of a list target."""
    if isinstance(target, str):
        return target
    if isinstance(target, list):
        return next((t for t in target if isinstance(t, str)), None)
    return None


def read_examples(archive_path: str | Path, max_input_chars: int = 160, max_target_chars: int = 80,
                  min_per_task: int = 100, max_per_task: int = 150) -> list[Example]:
    """The selected free-text examples of a BIG-bench source archive (see the module docstring).

    Returns them grouped by task (sorted), each task's in sha256 order; ids ``<task>-NNNN``.
    """
    found: dict[str, list[tuple[str, str]]] = {}  # task.json path -> (input, target) pairs
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            for member in archive:
                name = member.name
                if not (member.isfile() and name.endswith("/task.json")
                        and "/" in f"/{name}".partition(TASKS_DIR)[2]):
                    continue
                try:
                    task_json = json.load(archive.extractfile(member))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise DataError(f"{archive_path}: {name} is not valid JSON: {e}") from e
                pairs = []
                for ex in task_json.get("examples", []) if isinstance(task_json, dict) else []:
                    if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
                        continue
                    target = first_string(ex.get("target"))
                    if target is None:
                        continue
                    prompt, response = ex["input"].strip(), target.strip()
                    if 0 < len(prompt) <= max_input_chars and 0 < len(response) <= max_target_chars:
                        pairs.append((prompt, response))
                found[name] = pairs
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read the BIG-bench archive {archive_path}: {e}") from e
    if not found:
        raise DataError(f"{archive_path} holds no *{TASKS_DIR}*/task.json files")

    by_task: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    for name in sorted(found):
        task = f"/{name}".split(TASKS_DIR, 1)[1].split("/", 1)[0]
        for prompt, response in found[name]:
            if prompt not in seen:
                seen.add(prompt)
                by_task.setdefault(task, []).append((prompt, response))

    return cap_per_source(by_task, min_per_task, max_per_task)


def examples(options: dict[str, Any]) -> list[Example]:
    """The selected examples, extracted from the verified archive once and then cached."""
    key = {"archive_sha256": ARCHIVE_SHA256, "format": EXTRACT_FORMAT}
    return selected_examples("bigbench", options, SELECTION, key, lambda **chosen: read_examples(
        fetch_index_file(PACKAGE, ARCHIVE, ARCHIVE_SHA256), **chosen))


def load(spec: DataSpec) -> TaskData:
    return load_with_options("bigbench", spec, DEFAULT_OPTIONS, examples)


DATA = DataSpec(n_pool=900, n_targets=100, seed=0, options=dict(DEFAULT_OPTIONS))
TINY = presets.tiny("bigbench", DATA)
SMALL = presets.small("bigbench", DATA)

TASK = Task(
    name="bigbench",
    description="BIG-bench 1.0.0 free-text tasks as an instruction mixture, 33 tasks (offline, CPU)",
    presets={"tiny": TINY, "small": SMALL},
    load=load,
    labels="BIG-bench task (33)",
    optional="needs the BIG-bench 1.0.0 source archive, which the package index no longer serves "
             "(placed by hand in <cache>/downloads/)",
)
