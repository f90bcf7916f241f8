"""chatterbot: short English chit-chat pairs in 21 topics (the topic is the source label).

Data: the English conversations of the ``chatterbot-corpus`` 1.3.3 wheel, downloaded from the
package index at run time and verified by sha256 (nothing is copied into this repository).
Every pair of consecutive turns becomes a prompt/response example; one-character turns are
dropped and exact duplicate pairs removed (2,393 pairs fall to 1,171). Targets are drawn
round-robin over topics, so every topic has targets; the pool is drawn from the rest, and what
remains is the warm-up set of the from-scratch target LM.
"""

from __future__ import annotations

import zipfile

import yaml

from tdabench import presets
from tdabench.data import DataError, balanced_split, fetch_package_archive
from tdabench.spec import DataSpec, Example
from tdabench.task import Task, TaskData

PACKAGE, VERSION = "chatterbot-corpus", "1.3.3"
WHEEL = "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
WHEEL_SHA256 = "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"
PREFIX = "chatterbot_corpus/data/english/"


def read_pairs(wheel_path) -> list[Example]:
    """All deduplicated consecutive-turn pairs, in file and conversation order."""
    pairs, seen = [], set()
    with zipfile.ZipFile(wheel_path) as wheel:
        names = sorted(n for n in wheel.namelist() if n.startswith(PREFIX) and n.endswith(".yml"))
        if not names:
            raise DataError(f"{wheel_path} holds no {PREFIX}*.yml files")
        for name in names:
            topic = name[len(PREFIX):-len(".yml")]
            for conv in yaml.safe_load(wheel.read(name)).get("conversations", []):
                turns = [str(t).strip() for t in conv]
                for prompt, response in zip(turns, turns[1:]):
                    if len(prompt) <= 1 or len(response) <= 1 or (prompt, response) in seen:
                        continue
                    seen.add((prompt, response))
                    pairs.append(Example(f"{topic}-{len(pairs):04d}", prompt, response, topic))
    return pairs


def split(pairs: list[Example], spec: DataSpec) -> TaskData:
    """Seeded split: targets round-robin over topics (each topic's last example in shuffled
    order), then the first ``n_pool`` of the rest as the pool, the rest for warm-up."""
    return balanced_split(pairs, spec.n_pool, spec.n_targets, spec.seed, balanced_pool=False,
                          from_back=True)


def load(spec: DataSpec) -> TaskData:
    return split(read_pairs(fetch_package_archive(PACKAGE, VERSION, WHEEL, WHEEL_SHA256)), spec)


DATA = DataSpec(n_pool=800, n_targets=100, seed=0)
TINY = presets.tiny("chatterbot", DATA)
SMALL = presets.small("chatterbot", DATA)

TASK = Task(
    name="chatterbot",
    description="English chit-chat pairs from chatterbot-corpus 1.3.3, 21 topics (offline, CPU)",
    presets={"tiny": TINY, "small": SMALL},
    load=load,
    labels="topic (21)",
)
