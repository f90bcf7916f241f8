"""evalschat: short single-turn chat prompts and their ideal answers from OpenAI's evals registry.

Data: the registry data of the ``evals`` 3.0.1.post1 wheel on the package index (46 MB,
``evals/registry/data/<eval>/**.jsonl``), downloaded at run time with ``pip download`` and
verified by sha256 (nothing is copied into this repository). The wheel is read once: the
selected examples are cached as JSONL under ``<cache>/examples/``, keyed by the wheel's sha256
and the selection settings below.

Selection (settings in ``data.options``; defaults of the presets in brackets):

* a row is a JSON object with a chat ``input`` (a list of ``{role, content}`` messages) and an
  ``ideal`` answer (a string, or a list whose first string is taken as the response);
* single-turn rows only: exactly one ``user`` message with string content, no ``assistant``
  message, any other message a ``system`` one; rows with a plain-string input, few-shot
  dialogues (several user turns or assistant turns) and rows without an ideal are skipped;
* the prompt is the user content, stripped; **system messages are dropped**: they mostly hold
  an eval's shared instructions or persona, the same for all its rows, and prepended they would
  fill the 32-token prompt budget and hide the row's own content;
* short examples only: prompt of 1 to ``max_input_chars`` [160] characters, answer of 1 to
  ``max_target_chars`` [80] characters;
* each distinct prompt once: files are read in path order and a prompt already seen (in any
  eval) is dropped;
* the source is the eval's data folder (the folder under ``evals/registry/data``; deeper files
  count for it); a source needs ``min_per_source`` [150] such rows and keeps at most
  ``max_per_source`` [150]: those with the smallest sha256 of ``source, prompt, answer``, which
  does not depend on file order or seed (80 sources qualify with the defaults).

Split (:func:`tdabench.data.balanced_split`, seeded by ``data.seed``): targets round-robin over
sources, then the pool round-robin over sources, and the rest, cut to ``max_warmup`` [4000],
warms up the from-scratch target LM, which so never sees the pool or the targets.

Presets: ``tiny`` (the from-scratch LM above) and ``small`` (SmolLM2-135M-Instruct, its top 2
blocks fine-tuned; :mod:`tdabench.presets`), on the same pool and targets; the small tier uses
no warm-up split. The selection's character limits were set for the tiny tier's 32-token cut;
``small`` cuts at 64 SmolLM2 tokens (the fractions cut are in :mod:`tdabench.presets`).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from tdabench import presets
from tdabench.data import (
    DataError,
    cap_per_source,
    fetch_package_archive,
    load_with_options,
    selected_examples,
)
from tdabench.spec import DataSpec, Example
from tdabench.task import Task, TaskData

PACKAGE, VERSION = "evals", "3.0.1.post1"
WHEEL = "evals-3.0.1.post1-py3-none-any.whl"
WHEEL_SHA256 = "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78"
PREFIX = "evals/registry/data/"
EXTRACT_FORMAT = 1  # bump when read_examples changes what it returns for the same settings

SELECTION = {"max_input_chars": 160, "max_target_chars": 80, "min_per_source": 150, "max_per_source": 150}
DEFAULT_OPTIONS = {**SELECTION, "max_warmup": 4000}


def single_turn(row: Any) -> tuple[str, str] | None:
    """(user content, first ideal) of a single-turn chat row, else None (see the docstring)."""
    if not isinstance(row, dict) or not isinstance(row.get("input"), list):
        return None
    messages = row["input"]
    if not all(isinstance(m, dict) and m.get("role") in ("system", "user") for m in messages):
        return None
    users = [m.get("content") for m in messages if m["role"] == "user"]
    if len(users) != 1 or not isinstance(users[0], str):
        return None
    ideal = row.get("ideal")
    if isinstance(ideal, list):
        ideal = next((i for i in ideal if isinstance(i, str)), None)
    if not isinstance(ideal, str):
        return None
    return users[0].strip(), ideal.strip()


def read_examples(wheel_path: str | Path, max_input_chars: int = 160, max_target_chars: int = 80,
                  min_per_source: int = 150, max_per_source: int = 150) -> list[Example]:
    """The selected single-turn examples of an ``evals`` wheel (see the module docstring).

    Returns them grouped by source (sorted), each source's in sha256 order; ids ``<eval>-NNNN``.
    """
    by_source: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            names = sorted(n for n in wheel.namelist()
                           if n.startswith(PREFIX) and n.endswith(".jsonl") and "/" in n[len(PREFIX):])
            if not names:
                raise DataError(f"{wheel_path} holds no {PREFIX}<eval>/*.jsonl files")
            for name in names:
                source = name[len(PREFIX):].split("/", 1)[0]
                for line in wheel.read(name).decode("utf-8", "replace").splitlines():
                    try:
                        pair = single_turn(json.loads(line)) if line.strip() else None
                    except json.JSONDecodeError:
                        continue  # a few registry files hold a stray non-JSON line
                    if pair is None or pair[0] in seen:
                        continue
                    prompt, response = pair
                    if 0 < len(prompt) <= max_input_chars and 0 < len(response) <= max_target_chars:
                        seen.add(prompt)
                        by_source.setdefault(source, []).append(pair)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"cannot read the evals wheel {wheel_path}: {e}") from e

    return cap_per_source(by_source, min_per_source, max_per_source)


def examples(options: dict[str, Any]) -> list[Example]:
    """The selected examples, extracted from the verified wheel once and then cached."""
    key = {"wheel_sha256": WHEEL_SHA256, "format": EXTRACT_FORMAT}
    return selected_examples("evalschat", options, SELECTION, key, lambda **chosen: read_examples(
        fetch_package_archive(PACKAGE, VERSION, WHEEL, WHEEL_SHA256), **chosen))


def load(spec: DataSpec) -> TaskData:
    return load_with_options("evalschat", spec, DEFAULT_OPTIONS, examples)


DATA = DataSpec(n_pool=900, n_targets=100, seed=0, options=dict(DEFAULT_OPTIONS))
TINY = presets.tiny("evalschat", DATA)
SMALL = presets.small("evalschat", DATA)

TASK = Task(
    name="evalschat",
    description="single-turn chat prompts and ideal answers of the evals 3.0.1.post1 registry (offline, CPU)",
    presets={"tiny": TINY, "small": SMALL},
    load=load,
    labels="eval data folder (80)",
)
