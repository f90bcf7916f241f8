"""random: i.i.d. standard-normal scores. The floor every method must beat (LDS about 0)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdabench.method import FitContext, Method
from tdabench.seeds import method_rng
from tdabench.spec import Example
from tdabench.typed import param


class RandomScores(Method):
    FAMILY = "control"
    VERSION = 1  # bump when a change may move this adapter's numbers
    @dataclass
    class Config:
        seed: int = param(0, "added to the run's seed")

    def fit(self, pool: list[Example], context: FitContext) -> None:
        self.n_pool = len(pool)
        self.rng = method_rng(context.seed, self.config.seed)

    def score(self, targets: list[Example]) -> np.ndarray:
        return self.rng.standard_normal((len(targets), self.n_pool))
