"""repsim: similarity of the target LM's own hidden states (representation similarity).

Each example runs through the model ``checkpoint`` names (default: the base target LM fine-tuned
on the whole pool, :func:`tdabench.method.gradients.prepare`, shared with the gradient methods); its
representation is the mean of one layer's hidden states over the response tokens. The score is
the cosine (or dot product) of target and pool representations: more similar = more helpful.

Config: ``layer`` indexes ``hidden_states`` as transformers returns them (0 = embeddings,
-1 = the last block's output, the default); ``similarity`` is ``"cosine"`` or ``"dot"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from tdabench import lm
from tdabench.method import FitContext, Method, gradients
from tdabench.method.pooling import mean_pool
from tdabench.spec import Example
from tdabench.typed import param


class RepSim(Method):
    FAMILY = "representation"
    VERSION = 1  # bump when a change may move this adapter's numbers
    GRID = {"similarity": ["cosine", "dot"], "checkpoint": ["base", "pool", "subset"]}
    @dataclass
    class Config:
        layer: int = param(-1, "index into hidden_states (0 = embeddings, -1 = last layer)")
        similarity: Literal["cosine", "dot"] = param("cosine", "how two representations are compared")
        batch_size: int = param(64, "examples per forward pass", ge=1)
        checkpoint: gradients.OneModelCheckpoint = param(
            "pool", "the model whose hidden states are compared (tdabench.method.gradients.CHECKPOINTS)")

    def _represent(self, examples: list[Example]) -> np.ndarray:
        """(len(examples), d): mean hidden state of the chosen layer over response positions."""
        target, spec = self.prepared.lm, self.prepared.model_spec
        encoded, pad = lm.encode(target.tokenizer, examples, spec), target.tokenizer.pad_token_id
        out = []
        with torch.no_grad():
            for start in range(0, len(encoded), self.config.batch_size):
                batch = lm.to_device(lm.collate(encoded[start:start + self.config.batch_size], pad),
                                     lm.model_device(target.model))
                hidden = target.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      output_hidden_states=True).hidden_states[self.config.layer]
                out.append(mean_pool(hidden, batch["labels"] != lm.IGNORE).float())
        reps = torch.cat(out)
        if self.config.similarity == "cosine":
            reps = torch.nn.functional.normalize(reps, dim=1)
        return reps.cpu().numpy()

    def fit(self, pool: list[Example], context: FitContext) -> None:
        self.prepared = gradients.prepare(context, tracked=None, checkpoint=self.config.checkpoint)
        self.pool_representations = self._represent(pool)  # (N, d)

    def score(self, targets: list[Example]) -> np.ndarray:
        return self._represent(targets).astype(np.float64) @ self.pool_representations.T.astype(np.float64)
