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
from typing import Literal

import numpy as np

from tdabench.method import FitContext, Method, TextField, TextView, field_texts, require, text_view
from tdabench.spec import Example
from tdabench.typed import param

VARIANTS = ("robertson", "lucene", "atire", "bm25l", "bm25+")


class BM25(Method):
    FAMILY = "lexical"
    VERSION = 1  # bump when a change may move this adapter's numbers
    GRID = {"k1": [0.9, 1.5], "b": [0.4, 0.75, 1.0]}
    @dataclass
    class Config:
        field: TextField = param("both", "which text is indexed and queried with")
        text: TextView = param("model", "model: as the target LM reads it (preset's token cut); full: whole")
        k1: float = param(1.5, "term-frequency saturation", ge=0)
        b: float = param(0.75, "length normalisation", ge=0, le=1)
        delta: float = param(0.5, "lower bound of a term's weight (bm25l, bm25+)", ge=0)
        method: Literal[VARIANTS] = param("lucene", "bm25s's BM25 variant")
        stopwords: str = param("english", 'stop-word list of bm25s ("" = none)')

    def check_config(self) -> None:
        if self.config.stopwords:  # bm25s knows its lists: ask it now, not after the bank
            try:
                require("bm25s", "lexical", "bm25").tokenize(
                    ["a check"], return_ids=False, stopwords=self.config.stopwords, show_progress=False)
            except ValueError as err:
                raise ValueError(f"stopwords={self.config.stopwords!r}: {err}") from None

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
