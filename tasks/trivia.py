"""trivia: a multi-topic mixture of human-written trivia questions and their short answers.

Data: the trivia lists inside the ``red-discordbot`` 3.5.24 wheel on the package index
(``redbot/cogs/trivia/data/lists/<topic>.yaml``: question -> accepted answers, written by the
lists' authors; GPL-3.0), downloaded at run time as a pinned file verified by sha256 and read
as an archive, never installed (nothing of it is copied into this repository). The examples are
cached under ``<cache>/examples/`` after the first read. If the index stops serving that wheel,
place it (``WHEEL_SHA256`` below) in ``<cache>/downloads/`` by hand.

Why this source, for the third default task (bigbench's archive is gone from the index): it
rebuilds from the index with no compiler and no new dependency (a 6 MB wheel read with the
standard library and pyyaml; ``reasoning-gym``, the other FLAN-like candidate, needs pycosat
built from C and a dozen packages installed), its 54 lists give topic labels for recall, and its
answers are short free text written by people, as FLAN's targets are (gensim's analogy file has
14 categories of one format). Measured at ``tiny``: see ``docs/tasks.md``.

Selection (settings in ``data.options``; defaults in brackets):

* an entry of a list is a question (the key) and its accepted answers; the response is the
  first answer, as a string (numbers included); ``AUTHOR``, ``CONFIG`` and ``DESCRIPTION`` are
  not entries;
* text questions only: a question holding a link (image questions, "who's that Pokemon") is
  skipped; question of 1 to ``max_question_chars`` [160] characters, answer of 1 to
  ``max_answer_chars`` [40];
* each distinct question once, lists read in name order;
* the source is the list (its file name); a list needs ``min_per_topic`` [100] such questions
  and keeps at most ``max_per_topic`` [150] (:func:`tdabench.data.cap_per_source`: the smallest
  sha256 of topic, question, answer, whatever the order).

Split and presets as bigbench's (:func:`tdabench.data.balanced_split`: targets and then the
pool round-robin over topics, the rest, up to ``max_warmup`` [4000], warms up the tiny tier's
from-scratch LM); ``tiny`` and ``small`` on the same pool and targets.
"""

from __future__ import annotations

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

PACKAGE, VERSION = "red-discordbot", "3.5.24"
WHEEL = "red_discordbot-3.5.24-py3-none-any.whl"
WHEEL_SHA256 = "3cbdbdd8bb0b6dbab1f5f909151f12dcd40798b06df8beb791fd22b9e1b2c8bd"
LISTS_DIR = "redbot/cogs/trivia/data/lists/"
NOT_ENTRIES = ("AUTHOR", "CONFIG", "DESCRIPTION")
EXTRACT_FORMAT = 1  # bump when read_examples changes what it returns for the same settings

SELECTION = {"max_question_chars": 160, "max_answer_chars": 40, "min_per_topic": 100, "max_per_topic": 150}
DEFAULT_OPTIONS = {**SELECTION, "max_warmup": 4000}


def first_answer(answers: Any) -> str | None:
    """The first accepted answer as a string (a list's first item, or a lone answer)."""
    first = answers[0] if isinstance(answers, list) and answers else answers
    if isinstance(first, bool) or first is None or isinstance(first, (list, dict)):
        return None
    return str(first).strip()


def read_examples(wheel: str | Path, max_question_chars: int = 160, max_answer_chars: int = 40,
                  min_per_topic: int = 100, max_per_topic: int = 150) -> list[Example]:
    """The selected questions of the wheel's trivia lists (see the module docstring), grouped
    by topic (sorted); ids ``<topic>-NNNN``."""
    import yaml

    by_topic: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = sorted(n for n in archive.namelist() if n.startswith(LISTS_DIR) and n.endswith(".yaml"))
            for name in names:
                try:
                    entries = yaml.safe_load(archive.read(name))
                except yaml.YAMLError as e:
                    raise DataError(f"{wheel}: {name} is not valid YAML: {e}") from e
                topic = Path(name).stem
                for question, answers in (entries or {}).items() if isinstance(entries, dict) else ():
                    if not isinstance(question, str) or question in NOT_ENTRIES:
                        continue
                    prompt, response = question.strip(), first_answer(answers)
                    if (response is None or "http" in prompt or prompt in seen
                            or not 0 < len(prompt) <= max_question_chars
                            or not 0 < len(response) <= max_answer_chars):
                        continue
                    seen.add(prompt)
                    by_topic.setdefault(topic, []).append((prompt, response))
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"cannot read the {PACKAGE} wheel {wheel}: {e}") from e
    if not by_topic:
        raise DataError(f"{wheel} holds no trivia lists under {LISTS_DIR}")
    return cap_per_source(by_topic, min_per_topic, max_per_topic)


def examples(options: dict[str, Any]) -> list[Example]:
    """The selected examples, read from the verified wheel once and then cached."""
    key = {"wheel_sha256": WHEEL_SHA256, "format": EXTRACT_FORMAT}
    return selected_examples("trivia", options, SELECTION, key, lambda **chosen: read_examples(
        fetch_package_archive(PACKAGE, VERSION, WHEEL, WHEEL_SHA256), **chosen))


def load(spec: DataSpec) -> TaskData:
    return load_with_options("trivia", spec, DEFAULT_OPTIONS, examples)


DATA = DataSpec(n_pool=900, n_targets=100, seed=0, options=dict(DEFAULT_OPTIONS))
TINY = presets.tiny("trivia", DATA)
SMALL = presets.small("trivia", DATA)

TASK = Task(
    name="trivia",
    description=f"trivia questions and short answers over many topics ({PACKAGE} {VERSION}'s lists; "
                "offline, CPU)",
    presets={"tiny": TINY, "small": SMALL},
    load=load,
    labels="trivia list (topic)",
)
