"""The evaluation protocol: correlations, intervals over subsets, paired tests, the noise
ceiling, the tuning split, and LDS cross-checked against a peer (dattri) and scipy."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.stats import kendalltau, pearsonr

from tdabench import cli, metrics, runner
from tdabench.method import Method
from tdabench.protocol import protocol_hash, tuning_subsets
from tdabench.registry import register_method
from tdabench.reporting.compare import compare


def test_kendall_and_pearson_rows_match_scipy_with_ties_and_constant_rows():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(20, 30)).astype(float)  # many ties
    y = rng.normal(size=(20, 30))
    y[3] = 7.0  # constant row: no correlation defined -> 0
    kendall = metrics.correlation_rows(x, y, "kendall")
    pearson = metrics.correlation_rows(x, y, "pearson")
    for t in range(20):
        want_k = 0.0 if t == 3 else kendalltau(x[t], y[t]).statistic  # tau-b, scipy's default
        want_p = 0.0 if t == 3 else pearsonr(x[t], y[t]).statistic
        assert kendall[t] == pytest.approx(want_k, abs=1e-12)
        assert pearson[t] == pytest.approx(want_p, abs=1e-12)
    with pytest.raises(ValueError, match="unknown correlation"):
        metrics.correlation_rows(x, y, "distance")


def test_lds_equals_dattri_lds_on_the_same_scores_and_ground_truth():
    torch = pytest.importorskip("torch")
    dattri_metric = pytest.importorskip("dattri.metric")
    rng = np.random.default_rng(2)
    n_pool, n_targets, n_subsets, k = 40, 7, 25, 8
    scores = rng.normal(size=(n_targets, n_pool))
    subsets = np.stack([rng.choice(n_pool, k, replace=False) for _ in range(n_subsets)])
    membership = np.zeros((n_subsets, n_pool), dtype=bool)
    np.put_along_axis(membership, subsets, True, axis=1)
    labels = rng.normal(size=(n_targets, n_subsets))  # minus the losses
    ours = metrics.lds_per_target(metrics.sum_group_scores(scores, membership), labels)
    # dattri: score (n_train, n_test), ground truth ((n_subsets, n_test) values, (n_subsets, k) indices)
    theirs, _ = dattri_metric.lds(torch.tensor(scores.T), (torch.tensor(labels.T), torch.tensor(subsets)))
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-12)


def test_kendall_lds_reproduces_a_quanda_style_definition():
    """quanda's shipped LDS configs use Kendall's tau per target, averaged: set the same
    protocol here and it is a per-target scipy loop."""
    rng = np.random.default_rng(3)
    group_scores, labels = rng.normal(size=(9, 30)), rng.normal(size=(9, 30))
    loop = np.mean([kendalltau(g, y).statistic for g, y in zip(group_scores, labels)])
    assert metrics.lds(group_scores, labels, "kendall") == pytest.approx(loop, abs=1e-12)


def _noisy_bank(n_subsets=400, n_targets=60, noise=1.0, seed=0):
    """Losses (M, 2, T) = a per-(subset, target) signal plus independent seed noise."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n_subsets, 1, n_targets))
    return signal[:, 0].T, signal + noise * rng.normal(size=(n_subsets, 2, n_targets))


def test_noise_ceiling_is_what_an_oracle_of_the_true_effect_reaches():
    signal, losses = _noisy_bank()
    r, ceiling = metrics.noise_ceiling(losses, "pearson")
    assert r.mean() == pytest.approx(0.5, abs=0.03)  # var(signal) / (var(signal) + var(noise))
    labels = -losses.mean(axis=1).T
    oracle = metrics.lds(-signal, labels, "pearson")  # knows the noiseless effect exactly
    assert oracle == pytest.approx(ceiling.mean(), abs=0.02)  # sqrt(2 * .5 / 1.5) = 0.816
    _, spearman_ceiling = metrics.noise_ceiling(losses)
    assert metrics.lds(-signal, labels) == pytest.approx(spearman_ceiling.mean(), abs=0.03)
    _, clean = metrics.noise_ceiling(_noisy_bank(noise=0.05)[1])
    assert clean.mean() > 0.99
    with pytest.raises(ValueError, match="R >= 2"):
        metrics.noise_ceiling(losses[:, :1])


def test_subset_bootstrap_and_paired_tests():
    rng = np.random.default_rng(4)
    labels = rng.normal(size=(30, 80))
    good = labels + rng.normal(size=labels.shape)  # correlates with the labels
    bad = rng.normal(size=labels.shape)
    low, high = metrics.bootstrap_ci_subsets(good, labels)
    assert low < metrics.lds(good, labels) < high
    other_seed = metrics.bootstrap_ci_subsets(good, labels, seed=1)
    assert other_seed != (low, high)  # the seed is used...
    np.testing.assert_allclose(other_seed, (low, high), atol=0.02)  # ...and moves it by resampling noise
    same = metrics.paired_bootstrap_targets(metrics.lds_per_target(good, labels),
                                            metrics.lds_per_target(good, labels))
    assert same["mean"] == 0 and same["p_value"] == 1.0
    by_targets = metrics.paired_bootstrap_targets(metrics.lds_per_target(good, labels),
                                                  metrics.lds_per_target(bad, labels))
    by_subsets = metrics.paired_bootstrap_subsets(good, bad, labels, n_boot=300)
    for test in (by_targets, by_subsets):
        assert test["ci_low"] > 0 and test["p_value"] < 0.01


def test_tuning_split_is_a_fixed_rule_that_survives_a_growing_bank():
    assert tuning_subsets(10).tolist() == [True] + [False] * 4 + [True] + [False] * 4
    assert np.array_equal(tuning_subsets(200)[:100], tuning_subsets(100))


class SeenSubsets(Method):
    """Records which subsets it was asked to score (as a tdabench method)."""

    FAMILY = "control"
    seen: list[np.ndarray] = []

    @dataclass
    class Config:
        scale: float = 1.0

    def fit(self, pool, context):
        self.n = len(pool)

    def score(self, targets):
        return np.random.default_rng(0).normal(size=(len(targets), self.n)) * self.config.scale

    def score_groups(self, targets, membership):
        SeenSubsets.seen.append(np.asarray(membership).copy())
        return metrics.sum_group_scores(self.score(targets), membership)


def test_tune_sees_only_the_tuning_subsets_and_run_only_the_test_subsets(micro, tmp_path, capsys):
    from tdabench.groundtruth import build_bank

    _, spec, data = micro
    bank = build_bank(spec, data)
    tuning = tuning_subsets(len(bank.membership))
    register_method("seen", SeenSubsets)
    SeenSubsets.seen.clear()
    assert cli.main(["tune", "--method", "seen", "--task", "micro", "--preset", "micro",
                     "--grid", "scale=1,-1", "--results-dir", str(tmp_path), "--workers", "1"]) == 0
    assert len(SeenSubsets.seen) == 2
    for membership in SeenSubsets.seen:
        assert np.array_equal(membership, bank.membership[tuning])
    out = capsys.readouterr().out
    assert "tuning subsets" in out and "best: tdabench run --method seen" in out
    (csv,) = (tmp_path / "micro" / "micro" / "tuning").glob("seen-scale-*.csv")
    trials = csv.read_text().splitlines()
    assert trials[0].startswith("scale,tuning_lds") and len(trials) == 3
    # another experiment (issue 29: every tune overwrote tuning/METHOD.csv) gets a file of its own
    assert cli.main(["tune", "--method", "seen", "--task", "micro", "--preset", "micro",
                     "--grid", "scale=1,2", "--results-dir", str(tmp_path), "--workers", "1"]) == 0
    assert len(list((tmp_path / "micro" / "micro" / "tuning").glob("seen-scale-*.csv"))) == 2
    assert csv.read_text().splitlines() == trials
    capsys.readouterr()
    # scale=-1 flips every score: the two trials' LDS are opposite
    lds = sorted(float(line.split(",")[1]) for line in trials[1:])
    assert lds[0] == pytest.approx(-lds[1])
    record, _ = runner.run("seen", "micro", "micro", results_dir=tmp_path)
    assert record["metrics"]["lds"]["n_subsets"] == int((~tuning).sum())


def test_compare_and_protocols_that_never_mix(micro, tmp_path, capsys):
    from tdabench.reporting import leaderboard

    register_method("seen", SeenSubsets)
    runner.run("random", "micro", "micro", results_dir=tmp_path)
    runner.run("seen", "micro", "micro", results_dir=tmp_path)
    assert cli.main(["compare", "random", "seen", "--task", "micro", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "over targets" in out and "over subsets" in out and "p = " in out
    assert cli.main(["compare", "random", "nope", "--task", "micro", "--results", str(tmp_path)]) == 2
    # a Kendall record of the same method and bank is another protocol: never ranked with these
    record, path = runner.run("random", "micro", "micro", results_dir=tmp_path, correlation="kendall")
    assert path.name.endswith("-kendall.json") and record["protocol"]["correlation"].startswith("kendall")
    sel = leaderboard.load([tmp_path])
    for recs in sel.groups.values():  # each protocol in a block of its own, side by side
        assert len({r.record.protocol_hash for r in recs}) == 1
    assert [key[2] for key in sel.groups] == ["", "correlation=kendall"]
    spearman = json.loads(path.with_name(path.name.replace("-kendall", "")).read_text())
    with pytest.raises(ValueError, match="protocol_hash"):
        compare(path, path.with_name(path.name.replace("-kendall", "")))
    assert spearman["protocol_hash"] == protocol_hash("spearman") != record["protocol_hash"]
    assert record["protocol_hash"] == protocol_hash("kendall")


def test_protocol_hash_is_a_version_not_the_wording():
    from tdabench import protocol

    # the value every committed reference record carries (results/*/*/*.json): the sha256 of
    # the canonical JSON of the version and the correlation, computed here by hand
    by_hand = hashlib.sha256(b'{"correlation":"spearman","protocol_version":1}').hexdigest()[:8]
    assert protocol.protocol_hash("spearman") == by_hand == "0273c629"
    assert protocol.protocol_hash("spearman", 2) != protocol.protocol_hash("spearman", 1)
    assert protocol.protocol_hash("kendall") != protocol.protocol_hash("spearman")
    text = protocol.protocol("spearman")
    assert text["correlation"].startswith("spearman") and "m % 5" in text["subsets"]
    with pytest.raises(ValueError, match="unknown correlation 'distance'"):
        protocol.protocol_hash("distance")


def _equal_methods(rng, n_targets=30, n_subsets=60):
    """Labels and two methods of equal quality (independent noise of the same size)."""
    truth = rng.normal(size=(n_targets, n_subsets))
    labels = truth + rng.normal(size=truth.shape)
    return labels, truth + 1.5 * rng.normal(size=truth.shape), truth + 1.5 * rng.normal(size=truth.shape)


def test_paired_bootstraps_rarely_find_a_difference_where_there_is_none():
    """With no true difference, p < 0.05 should happen in about 5% of experiments."""
    rng = np.random.default_rng(11)
    over_targets, over_subsets = [], []
    for i in range(300):
        labels, a, b = _equal_methods(rng)
        pa, pb = metrics.lds_per_target(a, labels), metrics.lds_per_target(b, labels)
        over_targets.append(metrics.paired_bootstrap_targets(pa, pb, n_boot=1000, seed=i)["p_value"])
        if i < 40:
            test = metrics.paired_bootstrap_subsets(a[:, :30], b[:, :30], labels[:, :30], n_boot=100, seed=i)
            over_subsets.append(test["p_value"])
    assert np.mean(np.array(over_targets) < 0.05) < 0.09  # 5% +- 1.3% (binomial s.e.)
    assert np.mean(np.array(over_subsets) < 0.05) < 0.15  # 40 experiments: 5% +- 3.4%
    assert np.mean(np.array(over_targets) < 0.5) > 0.3  # not a test that never rejects anything
