"""tfidf: cosine similarity of TF-IDF vectors (scikit-learn's ``TfidfVectorizer``).

The vectorizer is fit on the pool's texts (vocabulary and idf come from the pool only); each
target is the query, and its score against a pool example is the cosine similarity of their
tf-idf vectors, i.e. the dot product of the L2-normalised rows: more similar = more helpful.
Terms absent from the pool are ignored, so a target sharing no term with an example scores 0.

Config: ``field`` is which text of an example is indexed and which text of the target is the
query: ``"prompt"``, ``"response"`` or ``"both"`` (the protocol's ``example_text``,
``"Question: <prompt>\\nAnswer: <response>"``); ``text``: ``"model"`` (default) reads prompt
and response as the target LM sees them, cut to the preset's token limits, ``"full"`` whole;
``ngram_min``/``ngram_max`` (sklearn's
``ngram_range``), ``sublinear_tf`` and ``min_df`` (an int is a document count, a float a
fraction) keep sklearn's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdabench.errors import ConfigError
from tdabench.method import FitContext, Method, TextField, TextView, field_texts, require, text_view
from tdabench.spec import Example
from tdabench.typed import param


class TfIdf(Method):
    FAMILY = "lexical"
    VERSION = 1  # bump when a change may move this adapter's numbers
    GRID = {"field": ["both", "prompt", "response"], "sublinear_tf": [False, True]}
    @dataclass
    class Config:
        field: TextField = param("both", "which text is indexed and queried with")
        text: TextView = param("model", "model: as the target LM reads it (preset's token cut); full: whole")
        ngram_min: int = param(1, "shortest n-gram", ge=1)
        ngram_max: int = param(1, "longest n-gram (>= ngram_min)", ge=1)
        sublinear_tf: bool = param(False, "true: 1 + log(tf) instead of tf")
        min_df: int | float = param(1,
                                    "ignore terms in fewer documents (int) or a smaller share (float)", gt=0)

    def check_config(self) -> None:
        c = self.config
        if not 1 <= c.ngram_min <= c.ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, not {c.ngram_min}, {c.ngram_max}")
        if isinstance(c.min_df, float) and c.min_df > 1:
            raise ValueError(f"min_df={c.min_df:g}: a share of the documents is at most 1 (a whole "
                             "number counts documents)")

    def fit(self, pool: list[Example], context: FitContext) -> None:
        text = require("sklearn.feature_extraction.text", "lexical", "tfidf")
        c = self.config
        if isinstance(c.min_df, int) and c.min_df > len(pool):
            raise ConfigError(f"min_df={c.min_df} is more than the pool's {len(pool)} documents: no "
                              "term could be kept; use a smaller min_df (or a share, e.g. 0.01)")
        self.view = text_view(c.text, context)
        self.vectorizer = text.TfidfVectorizer(ngram_range=(c.ngram_min, c.ngram_max),
                                               sublinear_tf=c.sublinear_tf, min_df=c.min_df)
        # (N, V) sparse
        self.pool_vectors = self.vectorizer.fit_transform(field_texts(self.view(pool), c.field))

    def score(self, targets: list[Example]) -> np.ndarray:
        # (T, V), L2-normalised rows
        queries = self.vectorizer.transform(field_texts(self.view(targets), self.config.field))
        return (queries @ self.pool_vectors.T).toarray().astype(np.float64)  # (T, N)
