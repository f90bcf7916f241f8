"""Every seed tdabench derives, in one place.

* the counterfactual subsets of a bank: ``numpy.random.default_rng(groundtruth.seed)``;
* the fine-tuning seed of (subset, training seed): a ``SeedSequence`` of the bank's seed, the
  subset and the replicate, plus the bank's seed stream where it has one;
* a method's training bank (AirRep's): each split's dev targets and its bank seed;
* the datamodel reference's own bank: the evaluation seed plus a fixed offset.

Seed streams keep banks that are not evaluation banks from ever sharing a fine-tuning seed
with one. (A method's own seeds, ``--seed``, are passed to it as ``FitContext.seed``.)
"""

from __future__ import annotations

import numpy as np

from tdabench.spec import GroundTruthSpec, TaskSpec

# seed streams of banks that are not evaluation banks (those use none): a method's training
# bank, the datamodel reference's own bank
STREAMS = {"training": 7_001, "datamodel": 7_002}
DATAMODEL_SUBSET_OFFSET = 1_000_000  # the datamodel bank draws its subsets with seed + this


def subsets_rng(gt: GroundTruthSpec) -> np.random.Generator:
    """The generator a bank's subsets are drawn with."""
    return np.random.default_rng(gt.seed)


def training_seed(spec: TaskSpec, subset: int, replicate: int) -> int:
    """The fine-tuning seed of subset ``subset``, replicate ``replicate``.

    Training banks (``groundtruth.stream`` set) draw from a separate seed stream, so they never
    share a fine-tuning seed with an evaluation bank.
    """
    gt = spec.groundtruth
    entropy = [gt.seed, subset, replicate] + ([] if gt.stream is None else [STREAMS[gt.stream], 1])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def training_split_rng(seed: int, split: int) -> np.random.Generator:
    """The generator that draws split ``split``'s dev targets in a method's training bank."""
    return np.random.default_rng([seed, split, STREAMS["training"]])


def training_split_seed(seed: int, split: int) -> int:
    """The ``groundtruth.seed`` of split ``split`` of a training bank seeded ``seed``."""
    return seed * 1_000 + split


def datamodel_seed(seed: int) -> int:
    """The ``groundtruth.seed`` of the datamodel's own bank for an evaluation bank's ``seed``."""
    return seed + DATAMODEL_SUBSET_OFFSET
