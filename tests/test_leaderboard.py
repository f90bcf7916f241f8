"""`tdabench leaderboard` and `tdabench plot`: reading, grouping, labelling, rendering, figures."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tdabench import cli, record
from tdabench.method import Method
from tdabench.protocol import PROTOCOL_VERSION, protocol_hash
from tdabench.reporting import leaderboard, tiers

SPEC_A = "aaaaaaaaaaaaaaaa"
SPEC_B = "bbbbbbbbbbbbbbbb"
REPO = Path(__file__).resolve().parent.parent


def make_record(root: Path, *, task: str = "toy", preset: str = "tiny", spec: str = SPEC_A,
                method: str = "m1", config: dict | None = None, config_hash: str | None = None,
                seed: int = 0, created: str = "2026-01-01T00:00:00+00:00", lds: float = 0.1,
                ci: tuple[float, float] | None = None, r1: float = 0.5, r10: float = 0.9,
                fit: float = 1.0, per_target: float = 1e-3, rss: int = 500 * 2**20,
                storage: int = 1000, train: float | None = None, train_cached: bool = False,
                train_original: dict | None = None,
                info: type | None = None, reference: bool = False, family: str | None = None,
                host: str = "hostA",
                commit: str | None = "0123456789abcdef", name: str | None = None,
                per_target_lds: list[float] | None = None, data: dict | None = None,
                spec_fields: dict | None = None, protocol_version: int = PROTOCOL_VERSION,
                correlation: str = "spearman") -> Path:
    """Write a small but complete synthetic schema-3 record; returns its path. ``info``: a
    method class whose Config the record stores as its defaults (None: no method info);
    ``per_target_lds``: the per-target LDS (default: 20 values around ``lds``); ``data``: the
    spec's data section (default: none); ``spec_fields``: more sections of the spec."""
    config = {"x": 1} if config is None else config
    config_hash = config_hash or f"{zlib.crc32(json.dumps(config, sort_keys=True).encode()):08x}"
    rng = np.random.default_rng(zlib.crc32(f"{method} {config_hash} {seed} {spec}".encode()))
    if per_target_lds is None:
        per_target_lds = (lds + 0.2 * rng.standard_normal(20)).tolist()
    phase = {"wall_s": fit, "cpu_s": fit, "peak_rss_bytes": rss, "peak_rss_delta_bytes": rss // 2,
             "cuda_peak_bytes": None}
    cost = {"fit": phase, "score": {**phase, "wall_s": per_target * 20, "peak_rss_bytes": rss // 2},
            "score_per_target_s": per_target, "storage_bytes": {"disk": 0, "memory": storage}}
    if train is not None:
        cost["train"] = {**phase, "wall_s": train, "cached": train_cached, "original": train_original}
    method_info = dataclasses.asdict(record.method_info(info)) if info else None
    if method_info is None and (reference or family):
        method_info = {"reference": reference, "config_fields": [], "config_defaults": {},
                       "family": family}
    lo, hi = ci or (lds - 0.05, lds + 0.05)
    rec = {
        "schema": 3, "task": task, "preset": preset, "spec_hash": spec,
        "spec": {"task": task, **({"data": data} if data is not None else {}), **(spec_fields or {})},
        "bank": {"path": "/bank", "n_subsets": 12, "n_test_subsets": 10, "n_seeds": 1, "fraction": 0.1,
                 "source": "finetune", "subset_sizes": [8], "n_pool": 80, "n_targets": 20},
        "method": method, "config": config, "config_hash": config_hash, "seed": seed,
        "method_info": method_info, "protocol": {"correlation": f"{correlation} over subsets"},
        "protocol_version": protocol_version,
        "protocol_hash": protocol_hash(correlation, protocol_version),
        "metrics": {"lds": {"mean": lds, "ci95": [lo, hi], "n_targets": 20, "n_subsets": 10},
                    "recall@1": {"value": r1, "chance": 0.05},
                    "recall@10": {"value": r10, "chance": 0.3}},
        "per_target_lds": per_target_lds, "cost": cost, "versions": {},
        "host": {"hostname": host, "platform": "Linux", "cpus": 2},
        "code": {"commit": commit, "dirty": False}, "created": created,
    }
    path = root / task / preset / (name or f"{method}-{config_hash}-s{seed}-{spec[:4]}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


@dataclass
class LbToyConfig:
    alpha: float = 1.0
    beta: str = "x"
    max_len: int = 8


class LbToy(Method):
    """A method class (never registered) whose Config the records store as their defaults."""

    FAMILY = "control"
    Config = LbToyConfig


def test_records_of_several_specs_are_shown_side_by_side_labelled_by_what_they_changed(tmp_path):
    """Issue 29: one `--set` experiment made the default spec's records "stale" and hid them."""
    default = {"groundtruth": {"n_subsets": 100, "n_seeds": 2, "fraction": 0.1}}
    changed = {"groundtruth": {"n_subsets": 15, "n_seeds": 1, "fraction": 0.1}}
    make_record(tmp_path, spec=SPEC_A, method="m1", lds=0.5, created="2026-01-01T00:00:00+00:00",
                spec_fields=default)
    make_record(tmp_path, spec=SPEC_A, method="m2", lds=0.4, created="2026-01-01T01:00:00+00:00",
                spec_fields=default)
    make_record(tmp_path, spec=SPEC_B, method="m1", lds=0.2, created="2026-01-02T00:00:00+00:00",
                spec_fields=changed)
    make_record(tmp_path, task="other", spec=SPEC_A, method="m1", lds=0.3)

    sel = leaderboard.load([tmp_path])
    variant = "groundtruth.n_seeds=1, groundtruth.n_subsets=15"
    assert list(sel.groups) == [("other", "tiny", ""), ("toy", "tiny", ""), ("toy", "tiny", variant)]
    assert sel.bank_keys[("toy", "tiny", "")] == f"{SPEC_A}/{protocol_hash()}"  # most methods: main
    assert sel.bank_keys[("toy", "tiny", variant)] == f"{SPEC_B}/{protocol_hash()}"
    assert not sel.stale and sel.warnings() == []
    df = leaderboard.table(sel)
    toy = df[df["task"] == "toy"]
    assert toy[["variant", "spec_hash", "lds"]].values.tolist() == [
        ["", SPEC_A, 0.5], ["", SPEC_A, 0.4], [variant, SPEC_B, 0.2]]
    assert toy["best"].tolist() == ["lds", "", ""]  # ranked within its own spec, never across
    md = leaderboard.render(df, "markdown", sel)
    assert f"## toy/tiny ({variant})" in md and "## toy/tiny\n" in md
    assert md.count("no noise ceiling (it needs two training seeds per subset") == 3  # a word why
    assert f"| method | other/tiny | toy/tiny | toy/tiny ({variant}) |" in md
    assert set(leaderboard.table(leaderboard.load([tmp_path], tasks=["toy"], specs=[SPEC_B[:6]]))[
        "spec_hash"]) == {SPEC_B}

    old = leaderboard.table(leaderboard.load([tmp_path], tasks=["toy"], specs=[SPEC_A[:6]]))
    assert set(old["spec_hash"]) == {SPEC_A} and sorted(old["lds"]) == [0.4, 0.5]
    assert set(old["task"]) == {"toy"}
    with pytest.raises(ValueError, match="no records for task"):
        leaderboard.load([tmp_path], tasks=["nope"])
    with pytest.raises(ValueError, match="spec hash"):
        leaderboard.load([tmp_path], specs=["ffff"])


def test_only_an_older_protocol_version_is_left_out_and_a_correlation_is_a_variant(tmp_path):
    make_record(tmp_path, spec=SPEC_A, method="m1", lds=0.5)
    make_record(tmp_path, spec=SPEC_A, method="m2", lds=0.5, name="kendall.json", correlation="kendall")
    make_record(tmp_path, spec=SPEC_B, method="m1", lds=0.1, name="old.json",
                protocol_version=PROTOCOL_VERSION - 1, created="2027-01-01T00:00:00+00:00")
    sel = leaderboard.load([tmp_path])
    assert list(sel.groups) == [("toy", "tiny", ""), ("toy", "tiny", "correlation=kendall")]
    (warning,) = sel.warnings()
    assert warning.startswith(f"toy/tiny: 1 record(s) of spec {SPEC_B} made under protocol version "
                              f"{PROTOCOL_VERSION - 1} ") and "rerun them" in warning


def test_the_installed_tasks_default_spec_is_the_main_one(tmp_path):
    """Another spec with more methods and newer records is shown beside the default, and the
    default is the block without a label."""
    from tdabench import registry
    from tdabench.spec import spec_hash

    default = spec_hash(registry.get_task("chatterbot").spec("tiny"))
    make_record(tmp_path, task="chatterbot", spec=default, method="m1")
    for method in ("m1", "m2", "m3"):
        make_record(tmp_path, task="chatterbot", spec=SPEC_B, method=method,
                    created="2026-02-01T00:00:00+00:00", spec_fields={"model": {"n_layers": 4}})
    sel = leaderboard.load([tmp_path])
    assert sel.bank_keys[("chatterbot", "tiny", "")].startswith(default)
    assert sel.bank_keys[("chatterbot", "tiny", "model.n_layers=4")].startswith(SPEC_B)


def test_duplicates_keep_the_newest_record_and_are_reported(tmp_path):
    old = make_record(tmp_path / "machine1", lds=0.1, created="2026-01-01T00:00:00+00:00",
                      config_hash="c0ffee00")
    new = make_record(tmp_path / "machine2", lds=0.3, created="2026-01-03T00:00:00+00:00",
                      config_hash="c0ffee00")
    other_seed = make_record(tmp_path / "machine1", lds=0.2, seed=1, config_hash="c0ffee00")

    sel = leaderboard.load([tmp_path])
    df = leaderboard.table(sel)
    assert len(df) == 2
    kept = df[df["seed"] == 0].iloc[0]
    assert kept["lds"] == 0.3 and kept["path"] == str(new)
    assert [(k.path, d.path) for k, d in sel.duplicates] == [(new, old)]
    assert any("duplicate" in w and str(old) in w for w in sel.warnings())
    # one config run with two seeds: the seed is in the label
    assert sorted(df["label"]) == ["m1 (seed=0)", "m1 (seed=1)"]
    assert str(other_seed) in set(df["path"])


def test_files_that_are_not_records_are_reported_not_fatal(tmp_path, capsys):
    good = make_record(tmp_path, lds=0.25)
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": {}, "fingerprint": "x"}))
    incomplete = json.loads(good.read_text())
    del incomplete["metrics"]["lds"]["ci95"]
    (tmp_path / "incomplete.json").write_text(json.dumps(incomplete))
    for name, schema in (("oldschema", 1), ("newschema", 99)):
        (tmp_path / f"{name}.json").write_text(json.dumps({**json.loads(good.read_text()), "schema": schema}))
    bad_type = json.loads(good.read_text())
    bad_type["metrics"]["lds"]["mean"] = "0.3"
    (tmp_path / "badtype.json").write_text(json.dumps(bad_type))
    bad_time = {**json.loads(good.read_text()), "created": "yesterday"}
    (tmp_path / "badtime.json").write_text(json.dumps(bad_time))

    sel = leaderboard.load([tmp_path, tmp_path / "missing"])
    reasons = {p.name: r for p, r in sel.skipped}
    assert "not readable JSON" in reasons["broken.json"]
    assert "not a tdabench result record" in reasons["list.json"]
    assert "not a tdabench result record" in reasons["manifest.json"]
    assert reasons["incomplete.json"] == "incomplete record: no metrics.lds.ci95"
    assert reasons["oldschema.json"] == ("record schema 1 is not readable by this tdabench (it reads 2 "
                                         "and 3): rerun the method")
    assert reasons["newschema.json"].endswith("upgrade tdabench")
    assert reasons["badtype.json"] == "bad record: metrics.lds.mean is str, expected float"
    assert "ISO timestamp" in reasons["badtime.json"]
    assert "no such file" in reasons["missing"]
    assert leaderboard.table(sel)["lds"].tolist() == [0.25]

    code = cli.main(["leaderboard", "--results", str(tmp_path), "--format", "csv"])
    out, err = capsys.readouterr()
    assert code == 0 and "skipped" in err and "broken.json" in err
    assert pd.read_csv(io.StringIO(out))["lds"].tolist() == [0.25]
    assert cli.main(["leaderboard", "--results", str(tmp_path / "missing")]) == 2
    assert f"no such directory: {tmp_path / 'missing'}" in capsys.readouterr().err  # issue 29
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["leaderboard", "--results", str(empty)]) == 2
    assert "no tdabench result records" in capsys.readouterr().err


def test_best_value_per_column_is_marked(tmp_path):
    make_record(tmp_path, method="a", lds=0.30, r1=0.2, fit=5.0, per_target=2e-3, storage=10)
    make_record(tmp_path, method="b", lds=0.10, r1=0.6, fit=0.5, per_target=3e-3, storage=10,
                train=7.0)
    make_record(tmp_path, method="c", lds=0.20, r1=0.4, fit=1.0, per_target=1e-3, storage=20)
    make_record(tmp_path, task="other", method="a", lds=-0.5, r1=0.1, fit=9.0)
    make_record(tmp_path, task="other", method="b", lds=-0.1, r1=0.2, fit=8.0)

    sel = leaderboard.load([tmp_path])
    df = leaderboard.table(sel)
    toy = df[df["task"] == "toy"].set_index("method")
    assert toy.index.tolist() == ["a", "c", "b"]  # sorted by LDS
    assert "lds" in toy.at["a", "best"].split(";") and "lds" not in toy.at["c", "best"]
    assert "recall_at_1" in toy.at["b", "best"] and "fit_s" in toy.at["b", "best"]
    assert "score_per_target_s" in toy.at["c", "best"].split(";")
    both = {m for m in toy.index if "storage_bytes" in toy.at[m, "best"]}
    assert both == {"a", "b"}  # ties are all marked
    assert not any("train_s" in b for b in toy["best"])  # one value only: nothing to compare
    assert not any("recall_at_10" in b for b in toy["best"])  # all equal
    other = df[df["task"] == "other"].set_index("method")
    assert "lds" in other.at["b", "best"]  # best within its own task, not across tasks

    md = leaderboard.render(df, "markdown", sel)
    assert "| a | **+0.300** |" in md and "| c | +0.200 |" in md
    assert "## LDS by task" in md and "**-0.100 [-0.150, -0.050]**" in md
    tex = leaderboard.render(df, "latex", sel)
    assert r"\textbf{+0.300}" in tex and r"\toprule" in tex and "95\\% CI" in tex


def test_config_labels_list_only_non_default_fields(tmp_path):
    """Labels come from the defaults stored in the records: none of these methods is installed."""
    make_record(tmp_path, method="lbtoy", config={"alpha": 1.0, "beta": "x", "max_len": 8},
                config_hash="00000001", info=LbToy, lds=0.1)
    make_record(tmp_path, method="lbtoy", config={"alpha": 2.0, "beta": "x", "max_len": 8},
                config_hash="00000002", info=LbToy, lds=0.2)
    make_record(tmp_path, method="lbtoy", config={"alpha": 2.0, "beta": "y", "max_len": 16},
                config_hash="00000003", info=LbToy, lds=0.3)
    # an older Config version without max_len: its visible fields match #2, so the hash is added
    make_record(tmp_path, method="lbtoy", config={"alpha": 2.0, "beta": "x"},
                config_hash="00000004", info=LbToy, lds=0.4)
    make_record(tmp_path, method="ghost", config={"k": 1}, config_hash="0000aaaa", lds=0.0)
    make_record(tmp_path, method="ghost", config={"k": 2}, config_hash="0000bbbb", lds=0.05)
    make_record(tmp_path, task="other", method="lbtoy", config={"alpha": 3.0, "beta": "x"},
                config_hash="00000005", info=LbToy, lds=0.1)
    make_record(tmp_path, task="other", method="solo", config={"alpha": 3.0},
                config_hash="00000006", info=LbToy, lds=0.2)

    sel = leaderboard.load([tmp_path])
    df = leaderboard.table(sel)
    labels = dict(zip(df["config_hash"], df["label"]))
    assert labels["00000001"] == "lbtoy"
    assert labels["00000002"] == "lbtoy (alpha=2.0) [00000002]"
    assert labels["00000004"] == "lbtoy (alpha=2.0) [00000004]"
    assert labels["00000003"] == "lbtoy (alpha=2.0, beta=y, max_len=16)"
    assert labels["00000005"] == "lbtoy (alpha=3.0)"  # the same method's label in every task
    assert labels["0000aaaa"] == "ghost (config 0000aaaa)"  # no stored defaults: the config hash
    assert labels["00000006"] == "solo"  # one config only: plain name, config in a footnote
    md = leaderboard.render(df, "markdown", sel)
    assert "Non-default configs: solo: alpha=3.0" in md
    assert r"max\_len=16" in leaderboard.render(df, "latex", sel)


def test_csv_parses_back_to_the_same_numbers(tmp_path):
    paths = [make_record(tmp_path, method=f"m{i}", lds=0.1 * i + 1e-7, fit=1.0 / (i + 3),
                         per_target=3.3e-5 * (i + 1), rss=123456789 + i, train=2.0 ** -i,
                         storage=7 * i) for i in range(3)]
    sel = leaderboard.load([tmp_path])
    df = leaderboard.table(sel)
    back = pd.read_csv(io.StringIO(leaderboard.render(df, "csv", sel)))
    assert back.columns.tolist() == leaderboard.COLUMNS
    back = back.set_index("path")
    for path in paths:
        rec = json.loads(path.read_text())
        got = back.loc[str(path)]
        np.testing.assert_allclose(
            [got["lds"], got["lds_ci_low"], got["lds_ci_high"], got["recall_at_1"], got["fit_s"],
             got["train_s"], got["score_per_target_s"], got["peak_rss_bytes"], got["storage_bytes"]],
            [rec["metrics"]["lds"]["mean"], *rec["metrics"]["lds"]["ci95"],
             rec["metrics"]["recall@1"]["value"], rec["cost"]["fit"]["wall_s"],
             rec["cost"]["train"]["wall_s"], rec["cost"]["score_per_target_s"],
             rec["cost"]["fit"]["peak_rss_bytes"], rec["cost"]["storage_bytes"]["memory"]],
            rtol=1e-15)
    assert back.loc[str(paths[2]), "best"].split(";")[0] == "lds"
    assert np.isnan(back["cuda_peak_bytes"]).all()


def test_a_real_record_from_results_is_read(tmp_path):
    found = sorted((REPO / "results" / "chatterbot" / "tiny").glob("random-bd048884-*-s0.json"))
    if not found:
        pytest.skip("reference record not present")
    real = found[0]
    shutil.copy(real, tmp_path / real.name)
    sel = leaderboard.load([tmp_path])
    assert not sel.skipped
    row = leaderboard.table(sel).iloc[0]
    data = json.loads(real.read_text())
    assert row["lds"] == data["metrics"]["lds"]["mean"] and row["label"] == "random"
    assert row["peak_rss_bytes"] == max(data["cost"][p]["peak_rss_bytes"] for p in ("fit", "score"))


def test_pareto_front_is_exactly_the_non_dominated_points():
    from tdabench.reporting.plots import pareto_front

    cost = [1.0, 2.0, 3.0, 2.0, 4.0, 0.5, np.nan, 5.0, 4.0]
    value = [0.1, 0.3, 0.2, 0.3, 0.5, 0.0, 0.9, 0.5, 0.4]
    # 2 is beaten by 1 (cheaper, better); 7 by 4 (same value, cheaper); 8 by 4 (same cost,
    # better); 6 has no cost; 1 and 3 are the same point: neither dominates the other
    assert pareto_front(cost, value).tolist() == [5, 0, 1, 3, 4]

    rng = np.random.default_rng(0)
    for _ in range(20):
        c, v = rng.integers(0, 8, 30).astype(float), rng.integers(0, 6, 30).astype(float)  # ties
        front = set(pareto_front(c, v).tolist())
        for i in range(30):
            dominated = any(c[j] <= c[i] and v[j] >= v[i] and (c[j] < c[i] or v[j] > v[i])
                            for j in range(30))
            assert (i in front) == (not dominated)


def _png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_plots_are_written_as_png_and_pdf(tmp_path, capsys):
    for task in ("toy", "other"):
        for i, method in enumerate(["random", "bm25", "lbtoy"]):
            make_record(tmp_path / "res", task=task, method=method, lds=0.1 * i,
                        per_target=10.0 ** (i - 4), train=3.0 if method == "lbtoy" else None)
    make_record(tmp_path / "res", method="lbtoy", config={"alpha": 2.0, "beta": "a long value"},
                config_hash="0000000f", lds=0.05, per_target=1e-2)

    code = cli.main(["plot", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "figs")])
    printed = capsys.readouterr().out.split()
    assert code == 0
    names = sorted(Path(p).name for p in printed)
    assert names == sorted(f"{n}.{e}" for n in ("lds", "pareto", "per_target_lds")
                           for e in ("png", "pdf"))
    for p in map(Path, printed):
        assert p.stat().st_size > 5000
        if p.suffix == ".pdf":
            assert p.read_bytes()[:5] == b"%PDF-"
        else:
            width, height = _png_size(p)
            assert width == round(3.3 * 200) and height > 400  # a column wide, at 200 dpi


def test_pareto_figure_tells_configs_apart_and_names_every_point(tmp_path):
    """Issue 29, item 6: two configs of a method shared a colour and a marker, two points at one
    place hid each other, numbered labels crowded and captions carried whole config strings."""
    import matplotlib
    from matplotlib.lines import Line2D

    from tdabench.reporting.plots import STYLE, config_keys, method_colors, plot_pareto

    make_record(tmp_path, method="lbtoy", info=LbToy, config={"alpha": 1.0, "beta": "x", "max_len": 8},
                config_hash="00000001", lds=0.30, per_target=1e-3)
    make_record(tmp_path, method="lbtoy", info=LbToy, config={"alpha": 2.0, "beta": "x", "max_len": 8},
                config_hash="00000002", lds=0.30, per_target=1e-3)  # exactly on top of the first
    make_record(tmp_path, method="random", lds=0.0, per_target=1e-5)
    make_record(tmp_path, method="bm25", lds=0.2, per_target=1e-4)
    df = leaderboard.table(leaderboard.load([tmp_path]))
    keys = {short: (marker, filled) for short, marker, filled in config_keys(df).values()}
    assert keys == {"lbtoy 00000001": ("o", True), "lbtoy 00000002": ("s", False),
                    "random": ("o", True), "bm25": ("o", True)}
    with matplotlib.rc_context(STYLE):
        fig = plot_pareto(df, method_colors(df["method"]))
    ax = fig.axes[0]
    drawn = [(line.get_marker(), matplotlib.colors.to_rgba(line.get_markerfacecolor()), line.get_zorder())
             for line in ax.get_lines() if line.get_marker() in ("o", "s") and line.get_markersize() == 3.5]
    square = next(d for d in drawn if d[0] == "s")
    assert square[1] == (1.0, 1.0, 1.0, 1.0) and square[2] > max(z for m, _, z in drawn if m == "o")
    names = sorted(t.get_text() for t in ax.texts)
    assert names == ["bm25", "lbtoy 00000001", "lbtoy 00000002", "random"]  # no numbers
    boxes = [t.get_window_extent() for t in ax.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    table = next(leg for leg in fig.legends if leg.get_title().get_text() == "configs")
    assert [t.get_text() for t in table.get_texts()] == ["lbtoy 00000001: the default config",
                                                         "lbtoy 00000002: alpha=2.0"]
    assert all(isinstance(h, Line2D) for h in table.legend_handles)


def test_method_colours_are_one_mapping():
    from tdabench.reporting.plots import method_colors

    colors = method_colors(["tfidf", "bm25", "random", "bm25"])
    assert list(colors) == ["bm25", "random", "tfidf"]
    assert len(set(colors.values())) == 3
    assert method_colors(["random", "tfidf", "bm25"]) == colors


def test_reference_rows_are_set_apart_and_cached_phases_never_ranked(tmp_path):
    make_record(tmp_path, method="ref", lds=0.9, per_target=1e-6, storage=1, train=0.01,
                train_cached=True, reference=True)
    make_record(tmp_path, method="learned", lds=0.3, train=0.001, train_cached=True, per_target=2e-3,
                train_original={"bank_build_s": 335.2, "train_s": 771.9, "steps": 100})
    make_record(tmp_path, method="trained", lds=0.2, train=50.0, per_target=3e-3)
    make_record(tmp_path, method="plain", lds=0.1, train=80.0, per_target=4e-3)
    sel = leaderboard.load([tmp_path])
    df = leaderboard.table(sel).set_index("method")
    assert df.index.tolist() == ["learned", "trained", "plain", "ref"]  # reference last
    assert df.at["ref", "best"] == ""  # highest LDS, fastest, smallest: still never best
    assert "lds" in df.at["learned", "best"] and "score_per_target_s" in df.at["learned", "best"]
    assert "train_s" not in df.at["learned", "best"]  # 0.001 s, but a cache load
    assert "train_s" in df.at["trained", "best"]
    md = leaderboard.render(leaderboard.table(sel), "markdown", sel)
    assert "| ref (reference) | +0.900 |" in md and "**+0.900**" not in md
    assert "| learned | **+0.300** |" in md
    learned = next(line for line in md.splitlines() if line.startswith("| learned |"))
    assert "| cached |" in learned and "**cached**" not in learned
    # what the cached training cost when it ran is shown beside the table, never ranked
    cached = ("Cached training, as measured when it ran (`cost.train.original`): learned: "
              "bank_build_s 335 s, train_s 772 s")
    assert f"\n{cached}\n" in md and "ref (reference): bank" not in md
    assert f"% {cached}" in leaderboard.render(leaderboard.table(sel), "latex", sel)
    assert "made on hostA, commit 0123456789, 2026-01-01" in md


def test_the_leaderboard_says_where_each_row_was_made(tmp_path):
    make_record(tmp_path, method="a", host="box1", commit="aaaaaaaaaaaa", created="2026-01-01T00:00:00+00:00")
    make_record(tmp_path, method="b", host="box2", commit=None, created="2026-01-05T00:00:00+00:00")
    sel = leaderboard.load([tmp_path])
    md = leaderboard.render(leaderboard.table(sel), "markdown", sel)
    assert "made on box1, commit aaaaaaaaaa, 2026-01-01: a; box2, commit unknown, 2026-01-05: b" in md
    csv = pd.read_csv(io.StringIO(leaderboard.render(leaderboard.table(sel), "csv", sel)))
    assert sorted(csv["host"]) == ["box1", "box2"]


def _schema2(rec: dict) -> dict:
    """A schema-3 record as schema 2 wrote it."""
    old = {k: v for k, v in rec.items() if k not in ("method_info", "protocol_version", "code")}
    old["host"] = {"platform": rec["host"]["platform"], "cpus": rec["host"]["cpus"]}
    for phase in old["cost"].values():
        if isinstance(phase, dict):
            phase.pop("cached", None)
    return {**old, "schema": 2, "protocol_hash": "14e7f769"}


def test_schema_2_records_are_upgraded_with_the_same_numbers(tmp_path):
    new = json.loads(make_record(tmp_path, lds=0.25, train=3.0).read_text())
    up = record.from_dict(_schema2(new))
    assert up.schema == 3 and up.protocol_version == 1 and up.protocol_hash == protocol_hash("spearman")
    assert up.metrics.lds.mean == 0.25 and up.per_target_lds == new["per_target_lds"]
    assert up.method_info is None and up.code.commit is None and not up.cost.phases["train"].cached
    with pytest.raises(record.RecordError, match="earlier protocol .*'deadbeef'.*rerun"):
        record.from_dict({**_schema2(new), "protocol_hash": "deadbeef"})
    kendall = record.from_dict({**_schema2(new), "protocol_hash": "77feba30"})
    assert kendall.protocol_hash == protocol_hash("kendall") != up.protocol_hash


def test_load_records_gives_a_flat_dataframe(tmp_path):
    import tdabench

    paths = [make_record(tmp_path, method=m, lds=v) for m, v in (("a", 0.1), ("b", 0.3))]
    (tmp_path / "toy" / "configs.json").write_text("{}")  # not a record: skipped silently
    (tmp_path / "toy" / "broken.json").write_text('{"spec_hash": "x", "metrics": {}}')
    with pytest.warns(UserWarning, match=r"skipped .*broken.json: record schema None is not readable"):
        df = tdabench.load_records(tmp_path).set_index("path")
    assert df.loc[str(paths[1]), "metrics.lds.mean"] == 0.3 and len(df) == 2
    assert df.loc[str(paths[0]), "cost.fit.wall_s"] == 1.0 and "method_info.reference" not in df


def _overview_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("| (noise ceiling)"))
    return lines[start:end + 1]


def _parse_overview(lines: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The overview table's column names and its rows as (label, cells)."""
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    header = cells(lines[0])[1:]
    assert set(cells(lines[1])) <= {"---", "---:"}
    return header, [(row[0], row[1:]) for row in map(cells, lines[2:])]


_CELL = re.compile(r"^(\*\*)?([+-]?\d\.\d{3}) \[([+-]?\d\.\d{3}), ([+-]?\d\.\d{3})\](\*\*)?$")


def _cell(text: str) -> tuple[float, float, float, bool] | None:
    """(value, CI low, CI high, bold) of a cell "+0.123 [+0.100, +0.150]" (None for a dash)."""
    if text == "–":
        return None
    match = _CELL.match(text)
    assert match and bool(match[1]) == bool(match[5]), text
    return float(match[2]), float(match[3]), float(match[4]), bool(match[1])


def _raw_records(results: Path) -> list[dict]:
    """Every committed record, read as plain JSON (not through tdabench's reader)."""
    out = []
    for path in sorted(results.glob("*/*/*.json")):
        rec = json.loads(path.read_text())
        if isinstance(rec, dict) and "metrics" in rec and "method" in rec:
            out.append(rec)
    return out


def _matches(rec: dict, label: str) -> bool:
    """Whether ``rec`` is of the method and non-default settings a row label names."""
    label = label.removesuffix(" (reference)")
    method, _, settings = label.partition(" (")
    if rec["method"] != method:
        return False
    pairs = [p.split("=", 1) for p in settings.rstrip(")").split(", ")] if settings else []
    return all(str(rec["config"].get(k)) == v for k, v in pairs)


def test_committed_leaderboard_and_readme_table_show_the_records_numbers_in_order():
    """The overview table of results/LEADERBOARD.md and of the README: every number is a
    committed record's LDS and 95% CI (read here from the JSON files), a dash only where no
    record of that method and config exists, rows by their mean LDS over the columns they
    have (best first) with reference rows after, the best ranked value of each column bold,
    and the noise ceiling of each column's bank last."""
    results = REPO / "results"
    if not (results / "LEADERBOARD.md").exists():
        pytest.skip("no committed leaderboard")
    committed = _overview_lines((results / "LEADERBOARD.md").read_text(encoding="utf-8"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    in_readme = _overview_lines(readme[readme.index("## Results"):])
    header, rows = _parse_overview(committed)
    assert _parse_overview(in_readme) == (header, rows), (
        "the README's results table differs from results/LEADERBOARD.md's first table")
    records = _raw_records(results)
    columns = [tuple(c.split("/")) for c in header]
    assert len(columns) >= 2 and all(len(c) == 2 for c in columns)
    assert rows[-1][0] == "(noise ceiling)"
    means, reference = [], []
    for label, cells in rows[:-1]:
        assert len(cells) == len(columns), label
        values = []
        for (task, preset), text in zip(columns, cells):
            mine = [r for r in records if r["task"] == task and r["preset"] == preset and _matches(r, label)]
            shown = _cell(text)
            if shown is None:
                assert not mine, f"{label} on {task}/{preset} has a record but the table shows none"
                continue
            value, low, high, _ = shown
            exact = [r["metrics"]["lds"]["mean"] for r in mine
                     if abs(r["metrics"]["lds"]["mean"] - value) <= 5e-4
                     and abs(r["metrics"]["lds"]["ci95"][0] - low) <= 5e-4
                     and abs(r["metrics"]["lds"]["ci95"][1] - high) <= 5e-4]
            assert exact, f"{label} on {task}/{preset}: {text} is no record's LDS"
            values.append(exact[0])
        assert values, label
        means.append(float(np.mean(values)))
        reference.append(label.endswith("(reference)"))
    # ranked rows first, then the references; within each, by mean LDS over the row's columns
    assert reference == sorted(reference) and any(reference) and not all(reference)
    ranked = [m for m, ref in zip(means, reference) if not ref]
    assert ranked == sorted(ranked, reverse=True)
    assert rows[0][0] != "random" and rows[len(ranked) - 1][0] == "random"  # the null is last ranked
    # the best value among the ranked rows of each column is bold, and only it
    for j, column in enumerate(columns):
        shown = [(_cell(cells[j]), ref) for (_, cells), ref in zip(rows[:-1], reference)]
        best = max(c[0] for c, ref in shown if c is not None and not ref)
        for c, ref in shown:
            if c is not None:
                assert c[3] == (not ref and c[0] == best), (column, c)
    # the noise ceiling is the bank's, as every record on that bank states it
    for (task, preset), text in zip(columns, rows[-1][1]):
        ceiling, low, high = (float(x) for x in re.findall(r"\d\.\d{3}", text))
        banks = [r["bank"]["noise_ceiling"] for r in records if (r["task"], r["preset"]) == (task, preset)]
        assert any(abs(b["ceiling"] - ceiling) <= 5e-4 and abs(b["ceiling_ci95"][0] - low) <= 5e-4
                   and abs(b["ceiling_ci95"][1] - high) <= 5e-4 for b in banks if b), (task, preset)
    # and every method with a committed record is in the table
    assert {r["method"] for r in records} <= {label.partition(" (")[0] for label, _ in rows[:-1]}


# ----------------------------------------------------------------------------- tiers, speed

def _tier_lds(means, n_targets: int, seed: int, noise: float = 0.05) -> np.ndarray:
    """(K, T) per-target LDS: ``means`` plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    return np.asarray(means)[:, None] + noise * rng.standard_normal((len(means), n_targets))


def test_kendall_bootstrap_identical_and_reversed_rankings():
    means = [0.1, 0.2, 0.3, 0.4, 0.5]
    a = _tier_lds(means, 100, seed=1)
    tau, (lo, hi) = tiers.kendall_bootstrap(a, _tier_lds(means, 80, seed=2))
    assert (tau, lo, hi) == pytest.approx((1, 1, 1))  # 0.1 apart, 0.005 standard error: never swapped
    tau, (lo, hi) = tiers.kendall_bootstrap(a, _tier_lds(means[::-1], 80, seed=2))
    assert (tau, hi) == pytest.approx((-1, -1))
    # one swap among four methods: (5 concordant - 1 discordant) / 6 pairs
    tau, _ = tiers.kendall_bootstrap(a[:4], _tier_lds([0.1, 0.2, 0.4, 0.3], 80, seed=3))
    assert tau == pytest.approx(4 / 6)


def test_kendall_bootstrap_interval_widens_with_close_methods_and_pairs_shared_targets():
    close = [0.30, 0.31, 0.32, 0.33]
    _, (lo, hi) = tiers.kendall_bootstrap(_tier_lds(close, 50, seed=4, noise=0.2),
                                          _tier_lds(close, 50, seed=5, noise=0.2))
    assert lo <= 0 and hi - lo >= 1.0  # methods 0.01 apart with 0.03 standard errors: the ranking is noise
    # on shared targets a method's luck per target is the same in both tiers: resampled jointly
    # the two rankings move together; resampled independently they do not
    luck = np.random.default_rng(6).normal(0, 0.5, (4, 60))
    means = np.array([0.1, 0.15, 0.2, 0.25])[:, None]
    a, b = (means + luck + _tier_lds([0, 0, 0, 0], 60, seed=s, noise=0.02) for s in (7, 8))
    tau, paired = tiers.kendall_bootstrap(a, b, paired=True)
    _, independent = tiers.kendall_bootstrap(a, b, paired=False)
    assert tau == pytest.approx(1) and paired[0] >= 0.6
    assert independent[0] <= 0
    with pytest.raises(ValueError, match="same targets"):
        tiers.kendall_bootstrap(a, b[:, :50], paired=True)


def _two_tiers(root: Path, small_means: list[float], data: dict | None = None) -> None:
    methods = ["m1", "m2", "m3", "m4"]
    tiny_means = [0.1, 0.2, 0.3, 0.4]
    for preset, means, seed in (("tiny", tiny_means, 10), ("small", small_means, 20)):
        spec = SPEC_A if preset == "tiny" else SPEC_B
        for k, (method, mean) in enumerate(zip(methods, means)):
            per = _tier_lds([mean], 40, seed=seed + k)[0]
            make_record(root, preset=preset, spec=spec, method=method, lds=float(per.mean()),
                        per_target_lds=per.tolist(), data=data)
    # a method in one tier only and a reference row: neither is ranked across tiers
    make_record(root, preset="small", spec=SPEC_B, method="only_small", lds=0.9)
    make_record(root, preset="tiny", spec=SPEC_A, method="datamodel", lds=0.0, reference=True)
    make_record(root, preset="small", spec=SPEC_B, method="datamodel", lds=0.9, reference=True)


def test_leaderboard_shows_both_tiers_and_their_rank_agreement(tmp_path):
    _two_tiers(tmp_path / "same", [0.15, 0.25, 0.35, 0.45])
    _two_tiers(tmp_path / "rev", [0.45, 0.35, 0.25, 0.15], data={"n_pool": 80})
    (same,) = tiers.rank_agreements(leaderboard.load([tmp_path / "same"]))
    assert same.labels == ["m1", "m2", "m3", "m4"] and same.tau == pytest.approx(1) and not same.paired
    sel = leaderboard.load([tmp_path / "rev"])
    (rev,) = tiers.rank_agreements(sel)
    assert rev.tau == pytest.approx(-1) and rev.paired  # equal data specs and target counts: paired
    text = leaderboard.render(leaderboard.table(sel), "markdown", sel)
    assert "## tiny vs small: rank agreement" in text
    assert "| toy | 4 | -1.00 | [-1.00, -1.00] | shared, paired |" in text
    block = text[text.index("## toy: tiny vs small"):]
    rows = block.splitlines()[6:10]  # best on small first: m1, last on tiny
    assert [r.split(" | ")[0] for r in rows] == ["| m1", "| m2", "| m3", "| m4"]
    assert [r.split(" | ")[2] for r in rows] == ["4", "3", "2", "1"]
    assert [r.split(" | ")[4] for r in rows] == ["1 |", "2 |", "3 |", "4 |"]
    assert "only_small" not in block.split("## toy/", 1)[0]
    assert list(leaderboard.lds_matrix(leaderboard.table(sel)).columns) == ["toy/tiny", "toy/small"]
    tex = leaderboard.render(leaderboard.table(sel), "latex", sel)
    assert "% tiny vs small: rank agreement" in tex


def test_a_method_configured_differently_per_tier_is_ranked_by_its_best_record(tmp_path):
    _two_tiers(tmp_path, [0.15, 0.25, 0.35, 0.45])
    # m1 gets two more small configs: the better (0.5) ranks it in small, the worse is not used
    for config, mean in (({"x": 2}, 0.5), ({"x": 3}, 0.0)):
        per = _tier_lds([mean], 40, seed=99)[0]
        make_record(tmp_path, preset="small", spec=SPEC_B, method="m1", config=config,
                    lds=float(per.mean()), per_target_lds=per.tolist())
    (agreement,) = tiers.rank_agreements(leaderboard.load([tmp_path]))
    assert agreement.labels == ["m1", "m2", "m3", "m4"]
    assert agreement.lds[1][0] == pytest.approx(0.5, abs=0.1)  # m1's best small record
    assert agreement.tau < 1  # m1 moved from last (tiny) to first (small)


def test_no_rank_agreement_with_one_tier_or_too_few_methods(tmp_path):
    for i, method in enumerate(["m1", "m2", "m3"]):
        make_record(tmp_path, method=method, lds=0.1 * i)
    for i, method in enumerate(["m1", "m2"]):
        make_record(tmp_path, preset="small", spec=SPEC_B, method=method, lds=0.1 * i)
    sel = leaderboard.load([tmp_path])
    assert tiers.rank_agreements(sel) == []  # two shared methods: nothing to rank
    assert "rank agreement" not in leaderboard.render(leaderboard.table(sel), "markdown", sel)


def test_speed_claim_compares_with_the_fastest_gradient_method(tmp_path):
    # The families come from the records (method_info.family), never from the methods' names:
    # the claim is made for a learned representation method (family representation, with a
    # train phase) against the fastest gradient method.
    times = {"airrep": (30.6e-3, "representation"), "logra": (4.71e-3, "gradient"),
             "graddot": (11.5e-3, "gradient"), "bm25": (0.05e-3, "lexical"),
             "embedding": (1e-4, "representation"), "unlabelled": (1e-6, None)}
    for method, (t, family) in times.items():
        make_record(tmp_path, method=method, per_target=t, family=family,
                    train=60.0 if method == "airrep" else None)
    make_record(tmp_path, preset="small", spec=SPEC_B, method="airrep", per_target=2e-3,
                family="representation", train=60.0)
    make_record(tmp_path, preset="small", spec=SPEC_B, method="ekfac", per_target=0.5, family="gradient")
    make_record(tmp_path, task="nogradient", method="airrep", per_target=1e-3, family="representation",
                train=60.0)
    make_record(tmp_path, task="nogradient", method="bm25", per_target=1e-5, family="lexical")
    make_record(tmp_path, task="untrained", method="embedding", per_target=1e-4, family="representation")
    make_record(tmp_path, task="untrained", method="graddot", per_target=1e-2, family="gradient")
    sel = leaderboard.load([tmp_path])
    df = leaderboard.table(sel)
    claims = tiers.speed_claims(df)
    # bm25 is no gradient method; embedding learns nothing (no train phase)
    assert set(claims) == {("toy", "tiny", ""), ("toy", "small", "")}
    tiny, small = claims[("toy", "tiny", "")], claims[("toy", "small", "")]
    assert tiny.baseline == "logra" and tiny.speedup == pytest.approx(4.71 / 30.6)
    assert small.baseline == "ekfac" and small.speedup == pytest.approx(250)
    text = leaderboard.render(df, "markdown", sel)
    assert ("Speed: inference per target: airrep 30.6 ms, fastest gradient method logra 4.71 ms: "
            "airrep is 6.5x slower (ratio 0.154).") in text
    assert "airrep is 250x faster (ratio 250)" in text


def test_rank_agreement_figure_is_drawn_with_both_tiers(tmp_path, capsys):
    _two_tiers(tmp_path / "res", [0.15, 0.25, 0.45, 0.35])
    assert cli.main(["plot", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "figs")]) == 0
    printed = [Path(p) for p in capsys.readouterr().out.split()]
    figure = tmp_path / "figs" / "rank_agreement.png"
    assert figure in printed and (tmp_path / "figs" / "rank_agreement.pdf") in printed
    width, height = _png_size(figure)
    assert width == round(3.3 * 200) and height > 600


def test_point_labels_do_not_overlap_and_sit_nearest_their_point():
    """A cluster like bigbench's text baselines (points 0.02 apart): every label is placed off the
    others and the points, with its own point nearest its middle; a label at a fixed offset
    (the former placement) would overlap its neighbours."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tdabench.reporting import plots

    x = np.array([0.06, 0.075, 0.08, 0.05, 0.40, 0.45, 0.0])
    y = np.array([0.355, 0.35, 0.365, 0.30, 0.58, 0.585, -0.02])
    labels = ["embedding", "tfidf", "bm25", "repsim", "graddot", "gradcos", "random"]
    with matplotlib.rc_context(plots.STYLE):
        fig = Figure(figsize=(plots.WIDTH, 2.4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.plot(x, y, "o", ms=3.5)
        ax.set_xlim(-0.05, 0.65)
        ax.set_ylim(-0.05, 0.65)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        fixed = [ax.annotate(s, (a, b), xytext=(2, 2), textcoords="offset points", fontsize=5)
                 for s, a, b in zip(labels, x, y)]
        fixed_boxes = [t.get_window_extent(renderer) for t in fixed]
        assert any(a.overlaps(b) for i, a in enumerate(fixed_boxes) for b in fixed_boxes[i + 1:])
        for t in fixed:
            t.remove()
        texts = plots.place_labels(ax, labels, x, y)
        boxes = [t.get_window_extent(renderer) for t in texts]
    assert [t.get_text() for t in texts] == labels and len(ax.texts) == len(labels)  # no leftovers
    centres = ax.transData.transform(np.column_stack([x, y]))
    inside = ax.get_window_extent(renderer)
    for i, box in enumerate(boxes):
        assert all(not box.overlaps(other) for j, other in enumerate(boxes) if j != i), labels[i]
        middle = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
        assert np.hypot(*(centres - middle).T).argmin() == i, labels[i]
        assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), labels[i]


def test_compare_takes_a_bare_task_at_its_default_preset_and_a_method_at_its_best_config(tmp_path, capsys):
    """``tdabench compare trak ekfac --task chatterbot`` (the README's example): a registered task
    without a preset is its default preset (tiny), as for ``run``; a method with several configs
    there is its best record, and the command says which it took."""
    root = tmp_path / "results"
    for preset, lds in (("tiny", (0.30, 0.20)), ("small", (0.70, 0.60))):
        make_record(root, task="chatterbot", preset=preset, method="trak", lds=lds[0])
        make_record(root, task="chatterbot", preset=preset, method="ekfac", lds=lds[1])
    make_record(root, task="chatterbot", preset="tiny", method="ekfac", config={"x": 2}, lds=0.25)
    assert cli.main(["compare", "trak", "ekfac", "--task", "chatterbot", "--results", str(root)]) == 0
    out, err = capsys.readouterr()
    assert "LDS +0.3000 - +0.2500" in out  # tiny's trak against tiny's best ekfac config
    note = re.fullmatch(r"tdabench: 2 records of 'ekfac' for chatterbot/tiny; taking the best, "
                        r"'(ekfac \(config \w+\))' \(LDS \+0\.2500\); name another by its label: "
                        r"'(ekfac \(config \w+\))'", err.strip())
    assert note, err
    assert cli.main(["compare", "trak", note.group(2), "--task", "chatterbot", "--results", str(root)]) == 0
    assert "LDS +0.3000 - +0.2000" in capsys.readouterr().out  # the other config, by its label
    assert cli.main(["compare", "trak", "nope", "--task", "chatterbot/small", "--results", str(root)]) == 2
    assert "choose one of: ekfac, trak" in capsys.readouterr().err


def test_compare_refuses_an_unregistered_task_at_several_presets_in_one_line(tmp_path, capsys):
    root = tmp_path / "results"
    for preset in ("tiny", "small"):
        make_record(root, task="toy", preset=preset, method="m1")
        make_record(root, task="toy", preset=preset, method="m2")
    assert cli.main(["compare", "m1", "m2", "--task", "toy", "--results", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("tdabench: error: records of toy at several presets (small, tiny); "
                       "name one: --task toy/small")


def test_compare_takes_the_main_spec_else_the_one_with_both_and_says_which(tmp_path, capsys):
    """Issue 29: after a --set experiment compare answered "0 records match" without naming the
    spec it picked."""
    root = tmp_path / "results"
    for method in ("m1", "m3", "m4"):
        make_record(root, spec=SPEC_A, method=method, spec_fields={"model": {"n_layers": 2}})
    for method in ("m1", "m2"):
        make_record(root, spec=SPEC_B, method=method, created="2026-02-01T00:00:00+00:00",
                    spec_fields={"model": {"n_layers": 4}})
    args = ["--task", "toy/tiny", "--results", str(root)]
    assert cli.main(["compare", "m1", "m3", *args]) == 0
    assert capsys.readouterr().err == ""  # the main spec, and no other has both
    assert cli.main(["compare", "m1", "m2", *args]) == 0
    assert capsys.readouterr().err == "tdabench: compared on toy/tiny (model.n_layers=4)\n"
    assert cli.main(["compare", "m2", "m3", *args]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"tdabench: error: no record of 'm2' for toy/tiny (spec {SPEC_A}); choose one of: m1, m3, m4; "
        f"no record of 'm3' for toy/tiny (model.n_layers=4) (spec {SPEC_B}); choose one of: m1, m2 "
        "(no spec has both; pick one with --spec)")
    make_record(root, spec=SPEC_B, method="m3", created="2026-02-01T00:00:00+00:00",
                spec_fields={"model": {"n_layers": 4}})
    assert cli.main(["compare", "m1", "m3", *args]) == 0  # as many methods, newer: B is main now
    assert capsys.readouterr().err == ("tdabench: compared on toy/tiny; both also have records on "
                                       f"toy/tiny (model.n_layers=2) (--spec {SPEC_A})\n")


def test_an_optional_tasks_records_are_labelled_and_kept_out_of_the_overview(tmp_path):
    for task in ("bigbench", "chatterbot"):
        for method in ("m1", "m2"):
            make_record(tmp_path, task=task, method=method)
    sel = leaderboard.load([tmp_path])
    df = leaderboard.table(sel)
    assert set(df.loc[df["task"] == "bigbench", "optional"]) == {get_optional("bigbench")}
    md = leaderboard.render(df, "markdown", sel)
    overview = md.split("\n\n")[1]
    assert "chatterbot/tiny" in overview and "bigbench" not in overview
    assert "Not in this overview: bigbench (optional: its data needs a file placed by hand)" in md
    assert "## bigbench/tiny\n\nOptional task: needs the BIG-bench 1.0.0 source archive" in md


def get_optional(task):
    from tdabench.registry import get_task

    return get_task(task).optional
