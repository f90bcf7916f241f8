"""Every seed tdabench derives, in one place.

* the counterfactual subsets of a bank: ``numpy.random.default_rng(groundtruth.seed)``;
* the fine-tuning seed of (subset, training seed): a ``SeedSequence`` of the bank's seed, the
  subset and the replicate, plus the bank's seed stream where it has one;
* a method's training bank (AirRep's): each split's dev targets and its bank seed;
* a reference method's own bank (the datamodel's): the evaluation seed plus a fixed offset;
* a method's own draws from the run's seed (``--seed``, ``FitContext.seed``): the members of an
  ensemble (TRAK's models), a seeded part of the pool (a reference model's training part, LESS's
  warm-up set), a control's random scores, AirRep's encoder training (its sampler and the order
  of its splits per epoch).

Seed streams keep banks that are not evaluation banks from ever sharing a fine-tuning seed
with one.
"""

from __future__ import annotations

import numpy as np

from tdabench.spec import GroundTruthSpec, TaskSpec

# seed streams of banks that are not evaluation banks (those use none): a method's training
# bank (AirRep's), a reference method's own bank (the datamodel's)
STREAMS = {"training": 7_001, "reference": 7_002}
REFERENCE_SUBSET_OFFSET = 1_000_000  # a reference method's own bank draws its subsets with seed + this


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


def ensemble_member_seed(seed: int, member: int) -> int:
    """The seed of member ``member`` (0, 1, ...) of an ensemble of models trained for a run
    seeded ``seed`` (TRAK's independently trained models)."""
    return seed + member


def pool_part_rng(seed: int) -> np.random.Generator:
    """The generator that draws a seeded part of the pool (a reference model's training part,
    LESS's warm-up examples)."""
    return np.random.default_rng(seed)


def method_rng(seed: int, offset: int = 0) -> np.random.Generator:
    """A method's own generator for a run seeded ``seed``, shifted by a config's ``offset``."""
    return np.random.default_rng(offset + seed)


def epoch_order_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch ``epoch``'s order of items (AirRep's training splits)."""
    return np.random.default_rng([seed, epoch])


def reference_bank_seed(seed: int) -> int:
    """The ``groundtruth.seed`` of a reference method's own bank (the datamodel's) for an
    evaluation bank's ``seed``."""
    return seed + REFERENCE_SUBSET_OFFSET
