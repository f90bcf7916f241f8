"""bm25: Okapi BM25 relevance of each pool example to the target (the ``bm25s`` library).

The pool's texts are tokenised by ``bm25s.tokenize`` (lower-case words of 2+ characters,
stopwords removed) and indexed; each target's text is the query, and its score against a pool
example is that example's BM25 score for the query: more relevant = more helpful. A target with
no token in the index scores 0 everywhere.

Config: ``field`` is which text of an example is indexed and which text of the target is the
query: ``"prompt"``, ``"response"`` or ``"both"`` (the protocol's ``example_text``); ``text``:
``"model"`` (default) reads prompt and response as the target LM sees them, cut to the preset's
token limits, ``"full"`` reads them whole; ``k1``,
``b``, ``delta`` (bm25l and bm25+ only), ``method`` (the variant: robertson, lucene, atire,
bm25l or bm25+) and ``stopwords`` (a bm25s stopword list name; "" keeps every token) keep the
library's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdabench.method import FitContext, check_field, check_text, field_texts, require, text_view
from tdabench.spec import Example

VARIANTS = ("robertson", "lucene", "atire", "bm25l", "bm25+")


class BM25:
    @dataclass
    class Config:
        field: str = "both"  # "prompt", "response" or "both"
        text: str = "model"  # "model": as the target LM sees it (after the preset's truncation); "full"
        k1: float = 1.5
        b: float = 0.75
        delta: float = 0.5
        method: str = "lucene"
        stopwords: str = "english"

    def __init__(self, config: Config) -> None:
        check_field(config.field)
        check_text(config.text)
        if config.method not in VARIANTS:
            raise ValueError(f"method must be one of {list(VARIANTS)}, not {config.method!r}")
        self.config = config

    def _tokens(self, examples: list[Example]) -> list[list[str]]:
        return self.bm25s.tokenize(field_texts(self.view(examples), self.config.field), return_ids=False,
                                   stopwords=self.config.stopwords or None, show_progress=False)

    def fit(self, pool: list[Example], context: FitContext) -> None:
        self.bm25s = require("bm25s", "lexical", "bm25")
        self.view = text_view(self.config.text, context)
        c = self.config
        self.retriever = self.bm25s.BM25(k1=c.k1, b=c.b, delta=c.delta, method=c.method)
        self.retriever.index(self._tokens(pool), show_progress=False)
        self.n_pool = len(pool)

    def score(self, targets: list[Example]) -> np.ndarray:
        scores = np.zeros((len(targets), self.n_pool))
        for row, query in zip(scores, self._tokens(targets)):
            ids = self.retriever.get_tokens_ids(query)  # tokens outside the index are dropped
            if ids:
                row[:] = self.retriever.get_scores(ids)
        return scores
