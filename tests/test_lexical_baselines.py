"""The lexical baselines (bm25, tfidf) and embedding's `field`: exact copies rank first, shapes,
config errors, agreement with a direct call of the library, and a run end to end."""

from __future__ import annotations

import numpy as np
import pytest

from tdabench import lm, runner
from tdabench.method import FitContext, field_texts, make_config, text_view
from tdabench.methods.bm25 import BM25
from tdabench.methods.tfidf import TfIdf
from tdabench.registry import get_method
from tdabench.spec import Example

METHODS = ["bm25", "tfidf", "embedding"]
FIELDS = ["prompt", "response", "both"]


def fitted(name, config, pool, micro, tmp_path):
    task, spec, data = micro
    cls = get_method(name)
    method = cls(make_config(cls, config))
    method.fit(pool, FitContext(spec, data, tmp_path))
    return method


def pool_with_copies(data):
    """The micro pool less any example sharing a prompt or response with a target (the pool has
    one: "Tell me a joke"), then a copy of every target: the copy is the only exact match."""
    prompts = {ex.prompt for ex in data.targets}
    responses = {ex.response for ex in data.targets}
    rest = [ex for ex in data.pool if ex.prompt not in prompts and ex.response not in responses]
    assert len(rest) >= 50
    return rest + list(data.targets)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("name", METHODS)
def test_an_exact_copy_of_each_target_ranks_first(micro, tmp_path, name, field):
    data = micro[2]
    pool = pool_with_copies(data)
    config = {"field": field, **({"similarity": "cosine"} if name == "embedding" else {})}
    scores = fitted(name, config, pool, micro, tmp_path).score(data.targets)
    n_rest, T = len(pool) - len(data.targets), len(data.targets)
    assert scores.shape == (T, len(pool))
    assert scores.argmax(axis=1).tolist() == list(range(n_rest, n_rest + T))


@pytest.mark.parametrize("name", ["bm25", "tfidf"])
def test_scores_are_a_finite_float64_matrix_and_zero_for_a_query_with_no_known_term(
        micro, tmp_path, name):
    data = micro[2]
    stranger = Example("x", "zzqx qqzx", "xqzz", "none")  # no token of the pool's prompts
    scores = fitted(name, {"field": "prompt", "text": "full"}, data.pool, micro, tmp_path).score(
        [*data.targets, stranger])
    assert scores.shape == (len(data.targets) + 1, len(data.pool)) and scores.dtype == np.float64
    assert np.isfinite(scores).all()
    assert (scores[-1] == 0).all() and (scores[:-1].max(axis=1) > 0).all()


@pytest.mark.parametrize("name", METHODS)
def test_a_bad_field_names_the_valid_choices(name):
    cls = get_method(name)
    with pytest.raises(ValueError, match=r"field must be one of \['prompt', 'response', 'both'\], "
                                         r"not 'title'"):
        cls(make_config(cls, {"field": "title"}))


def test_bad_bm25_variant_and_ngram_range_are_refused():
    with pytest.raises(ValueError, match=r"method must be one of \['robertson', 'lucene', 'atire', "):
        BM25(make_config(BM25, {"method": "okapi"}))
    with pytest.raises(ValueError, match="ngram_min <= ngram_max"):
        TfIdf(make_config(TfIdf, {"ngram_min": "2"}))


@pytest.mark.parametrize("config", [
    {},
    {"field": "prompt", "k1": "1.2", "b": "0.5", "method": "bm25+", "delta": "1.0", "stopwords": ""},
])
def test_bm25_is_the_bm25s_library(micro, tmp_path, config):
    import bm25s

    data = micro[2]
    method = fitted("bm25", {**config, "text": "full"}, data.pool, micro, tmp_path)
    scores = method.score(data.targets[:1])[0]

    c = method.config  # the library's own README recipe: tokenize, index, retrieve
    corpus = field_texts(data.pool, c.field)
    query = field_texts(data.targets[:1], c.field)
    retriever = bm25s.BM25(k1=c.k1, b=c.b, delta=c.delta, method=c.method)
    retriever.index(bm25s.tokenize(corpus, stopwords=c.stopwords or None, show_progress=False),
                    show_progress=False)
    docs, values = retriever.retrieve(bm25s.tokenize(query, stopwords=c.stopwords or None,
                                                     show_progress=False),
                                      k=len(corpus), show_progress=False)
    expected = np.zeros(len(corpus))
    expected[docs[0]] = values[0]
    assert expected.max() > 0
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("config", [
    {},
    {"field": "response", "ngram_max": "2", "sublinear_tf": "true", "min_df": "2"},
])
def test_tfidf_is_sklearns_cosine_similarity(micro, tmp_path, config):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    data = micro[2]
    method = fitted("tfidf", {**config, "text": "full"}, data.pool, micro, tmp_path)
    c = method.config
    vectorizer = TfidfVectorizer(ngram_range=(c.ngram_min, c.ngram_max), sublinear_tf=c.sublinear_tf,
                                 min_df=c.min_df)
    pool_vectors = vectorizer.fit_transform(field_texts(data.pool, c.field))
    expected = cosine_similarity(vectorizer.transform(field_texts(data.targets, c.field)), pool_vectors)
    assert (expected > 0).any()
    np.testing.assert_allclose(method.score(data.targets), expected, rtol=1e-12, atol=1e-12)


def test_embedding_field_changes_what_is_encoded(micro, tmp_path):
    data = micro[2]
    both = fitted("embedding", {}, data.pool, micro, tmp_path).score(data.targets)
    prompt = fitted("embedding", {"field": "prompt"}, data.pool, micro, tmp_path).score(data.targets)
    assert both.shape == prompt.shape == (len(data.targets), len(data.pool))
    assert not np.allclose(both, prompt)


@pytest.mark.parametrize("name", ["bm25", "tfidf"])
def test_run_end_to_end(micro, tmp_path, name):
    record, path = runner.run(name, "micro", "micro", results_dir=tmp_path)
    assert path.exists() and path.parent == tmp_path / "micro" / "micro"
    assert record["method"] == name and record["config"]["field"] == "both"
    m = record["metrics"]
    assert m["lds"]["n_targets"] == 12 and -1 <= m["lds"]["mean"] <= 1
    assert m["recall@10"]["value"] > m["recall@10"]["chance"]
    assert "LDS" in runner.summary(record)


def test_lexical_methods_are_found_through_entry_points():
    assert get_method("bm25") is BM25 and get_method("tfidf") is TfIdf


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_repsim_ranks_an_exact_copy_first(micro, tmp_path, similarity):
    data = micro[2]
    pool = pool_with_copies(data)
    scores = fitted("repsim", {"similarity": similarity}, pool, micro, tmp_path).score(data.targets)
    n_rest, T = len(pool) - len(data.targets), len(data.targets)
    assert scores.shape == (T, len(pool)) and np.isfinite(scores).all()
    if similarity == "cosine":  # a copy has the very same representation: cosine 1
        assert scores.argmax(axis=1).tolist() == list(range(n_rest, n_rest + T))
        np.testing.assert_allclose(scores[np.arange(T), n_rest + np.arange(T)], 1.0, atol=1e-5)


def test_the_model_text_is_what_the_target_lm_sees(micro, tmp_path):
    _, spec, data = micro
    view = text_view("model", FitContext(spec, data, tmp_path))
    seen = view(data.pool)
    tokenizer = lm.load_base_model(spec.model, data.warmup, data.pool).tokenizer
    assert lm.encode(tokenizer, seen, spec.model) == lm.encode(tokenizer, data.pool, spec.model)
    cut = [a != b for ex, cut_ex in zip(data.pool, seen) for a, b in
           ((ex.prompt, cut_ex.prompt), (ex.response, cut_ex.response))]
    assert any(cut)  # micro truncates at 16 tokens: some texts are cut, ...
    kept = [ex for ex, cut_ex in zip(data.pool, seen) if ex == cut_ex]
    assert kept  # ... and those that fit are kept as they are
    assert text_view("full", FitContext(spec, data, tmp_path))(data.pool) == data.pool
    with pytest.raises(ValueError, match=r"text must be one of \['model', 'full'\]"):
        text_view("short", FitContext(spec, data, tmp_path))


@pytest.mark.parametrize("name", METHODS)
def test_text_model_scores_the_truncated_examples(micro, tmp_path, name):
    _, spec, data = micro
    view = text_view("model", FitContext(spec, data, tmp_path))
    model = fitted(name, {}, data.pool, micro, tmp_path).score(data.targets)
    full = fitted(name, {"text": "full"}, data.pool, micro, tmp_path).score(data.targets)
    by_hand = fitted(name, {"text": "full"}, view(data.pool), micro, tmp_path).score(view(data.targets))
    np.testing.assert_allclose(model, by_hand, rtol=1e-6)
    assert not np.allclose(model, full)
