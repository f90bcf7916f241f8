"""The one inner-product core of the gradient methods (graddot, gradcos, tracin, less).

Each of them scores a target x against a pool example z as

    score(x, z) = sum over states c of  w_c * <phi_c(target rep_c(x)), psi_c(train rep_c(z))>

where a state c is one set of model weights (``Prepared.states``: the reference model, or the
epochs of a trajectory, or LESS's warm-up checkpoints) with weight w_c (1, or the learning rate
for TracIn-style sums). :class:`InnerProductMethod` owns that loop, the pool-side cache and the
conversion to the protocol's (T, N) float64 with higher = more helpful; an adapter overrides only
what differs, in the style of dattri's ``BaseInnerProductAttributor``:

* :meth:`~InnerProductMethod.setup`: the model and its states (default:
  :func:`tdabench.method.gradients.prepare` with the config's ``tracked`` and ``checkpoint``);
* :meth:`~InnerProductMethod.load`: put a state's weights into the model;
* :meth:`~InnerProductMethod.train_rep` / :meth:`~InnerProductMethod.target_rep`: (n, P)
  representations, by default per-example gradients of the pool example's summed and the
  target's mean response-token cross-entropy over the tracked weights;
* :meth:`~InnerProductMethod.transform_train` / :meth:`~InnerProductMethod.transform_target`:
  (n, P) -> (n, k), identity by default (unit norm, a projection, ...);
* :meth:`~InnerProductMethod.gradient_sketch`: a :class:`~tdabench.method.gradients.KroneckerProjection`
  that sketches each tracked layer's gradient as it is taken (None by default: exact gradients).

The transformed pool representations are cached in ``fit``: in memory (on the model's device)
for one state, on disk (one ``.npy`` per state in the work directory, read back to the model's
device one at a time) for several. Where one state's untransformed gradients would exceed
:data:`MEMORY_BUDGET_BYTES` (full MLP gradients of the ``small`` tier: 800 x 5.3M floats, 17 GB)
the pool is taken in chunks of whole batches of about :data:`CHUNK_BYTES` (at least one batch:
one 32-example batch at ``small``), appended to a raw float32 file in a
scratch directory under the work directory and read back in chunks of pool rows when scoring
(plain reads, not a memory map, so the process's RSS stays what it needs): the same batches, so
the same features, with memory bounded. The disk use shows in the record's storage; a disk that
cannot hold it is refused after the first chunk (:class:`tdabench.errors.DiskSpaceError`); the scratch
directory is removed when the method object goes away. The model is on
``context.device``, put there by :func:`tdabench.method.gradients.prepare`; on the CPU every step is the
code path of a CPU-only build.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from tdabench import lm
from tdabench.errors import DiskSpaceError
from tdabench.method import FitContext, Method, gradients
from tdabench.spec import Example
from tdabench.store import CACHE_ENV

# Bytes of one state's (N, P) pool gradients above which they are made and kept in chunks on disk.
MEMORY_BUDGET_BYTES = 4 * 2**30
# Bytes of one chunk's untransformed gradients (rounded down to whole batches, at least one): what
# a chunk adds to peak memory (8 batches of 5.3M-float gradients made 13 GB peaks at ``small``).
CHUNK_BYTES = 2**30
# Bytes of one batch's exact per-example gradients: a batch is made smaller where the config's
# would pass it (one example's are 1.25 GB at Qwen2.5-0.5B's MLPs).
BATCH_BYTES = 2**30


class InnerProductMethod(Method):
    """Base class of the inner-product gradient methods; ``config`` is a
    :class:`tdabench.method.gradients.GradientConfig` (or subclass), its choices and ranges checked by
    ``make_config`` from the field types."""

    FAMILY = "gradient"

    # --- what an adapter overrides ------------------------------------------------------------

    def setup(self, pool: list[Example], context: FitContext) -> gradients.Prepared:
        """The model and the states at which representations are taken."""
        return gradients.prepare(context, self.config.tracked, self.config.checkpoint)

    def load(self, state: gradients.State) -> None:
        """Put ``state``'s weights into the model."""
        self.prepared.load(state)

    def train_rep(self, state: gradients.State, examples: list[Example]) -> torch.Tensor:
        """(n, P): gradients of each pool example's summed response-token cross-entropy."""
        return self.gradients(examples, "train")

    def target_rep(self, state: gradients.State, examples: list[Example]) -> torch.Tensor:
        """(n, P): gradients of each target's mean response-token cross-entropy."""
        return self.gradients(examples, "measurement")

    def transform_train(self, state: gradients.State, rep: torch.Tensor) -> torch.Tensor:
        return rep

    def gradient_sketch(self, n_pool: int, context: FitContext) -> gradients.KroneckerProjection | None:
        """The sketch of the per-example gradients (None: exact), decided once the model is
        set up (``self.prepared``) and the pool's size is known."""
        return None

    def transform_target(self, state: gradients.State, rep: torch.Tensor) -> torch.Tensor:
        return rep

    # --- the shared structure -----------------------------------------------------------------

    def gradients(self, examples: list[Example], loss: str) -> torch.Tensor:
        """(n, P) per-example gradients of ``loss`` ("train" or "measurement") over the tracked
        modules, at the weights now in the model. The same ``examples`` list is tokenised once, however many
        states ask for it."""
        target = self.prepared.lm
        cached = getattr(self, "_encoded", None)
        if cached is None or cached[0] is not examples:
            self._encoded = (examples, lm.encode(target.tokenizer, examples, self.prepared.model_spec))
        encoded = self._encoded[1]
        return gradients.per_example_gradients(target.model, self.prepared.modules, encoded,
                                               target.tokenizer.pad_token_id, loss,
                                               self._batch_size(), self.sketch)

    def _batch_size(self) -> int:
        """The config's batch size, made smaller where one batch's exact gradients would pass
        :data:`BATCH_BYTES`."""
        if self.sketch is not None:
            return self.config.batch_size
        per_example = gradients.n_tracked(self.prepared.modules) * 4
        return max(1, min(self.config.batch_size, BATCH_BYTES // per_example))

    def fit(self, pool: list[Example], context: FitContext) -> None:
        self.prepared = self.setup(pool, context)
        self.n_pool = len(pool)
        self.sketch = self.gradient_sketch(len(pool), context)
        states = self.prepared.states
        self.pool_features: list[torch.Tensor] = []  # per state (N, k), when held in memory
        self.files: list[Path] = []  # per state, when kept on disk
        width = self.sketch.width if self.sketch else gradients.n_tracked(self.prepared.modules)
        self.chunked = len(pool) * width * 4 > MEMORY_BUDGET_BYTES
        if len(states) > 1 or self.chunked:
            context.workdir.mkdir(parents=True, exist_ok=True)
        if self.chunked:  # removed with this object (or at exit): features nothing else reuses
            self.scratch = tempfile.TemporaryDirectory(dir=context.workdir, prefix="pool-features-")
        for c, state in enumerate(states):
            self.load(state)
            if self.chunked:
                self.files.append(Path(self.scratch.name) / f"state-{c}.f32")
                self.width = self._features_to_disk(state, pool, self.files[-1])
                continue
            features = self.transform_train(state, self.train_rep(state, pool))
            if len(states) == 1:
                self.pool_features.append(features)
            else:
                self.files.append(context.workdir / f"pool-features-{c}.npy")
                np.save(self.files[-1], features.cpu().numpy())

    def _chunk_size(self) -> int:
        """Pool examples per chunk: whole batches of the config's ``batch_size``."""
        batch = self._batch_size()
        width = self.sketch.width if self.sketch else gradients.n_tracked(self.prepared.modules)
        per_batch = batch * width * 4
        return batch * max(1, CHUNK_BYTES // per_batch)

    def _features_to_disk(self, state: gradients.State, pool: list[Example], path: Path) -> int:
        """State ``state``'s (N, k) pool features appended to the raw float32 file ``path``, a
        chunk at a time (row-major); returns k."""
        step, width = self._chunk_size(), 0
        with open(path, "wb") as out:
            for start in range(0, len(pool), step):
                part = self.transform_train(state, self.train_rep(state, pool[start:start + step]))
                if not width and path == self.files[0]:  # the first chunk tells the width
                    self._check_disk(path.parent, part.shape[1])
                width = part.shape[1]
                part.cpu().numpy().astype(np.float32, copy=False).tofile(out)
        return width

    def _check_disk(self, where: Path, width: int) -> None:
        """Refuse, before the rest is computed, pool features the disk cannot hold."""
        need = len(self.prepared.states) * self.n_pool * width * 4
        free = shutil.disk_usage(where).free
        if need > free:
            raise DiskSpaceError(
                f"the pool features need {need / 2**20:,.0f} MiB of scratch ({len(self.prepared.states)} "
                f"state(s) x {self.n_pool} examples x {width} floats) in {where}, which has "
                f"{free / 2**20:,.0f} MiB free: free space there or set {CACHE_ENV} to a larger disk")

    def _pool_dots(self, c: int, features: torch.Tensor) -> torch.Tensor:
        """(T, N) float64: ``features`` (T, k) dotted with state c's pool features."""
        if not self.chunked:
            return (features @ self._pool_features(c, features.device).T).double()
        step, parts = self._chunk_size(), []
        with open(self.files[c], "rb") as f:
            for start in range(0, self.n_pool, step):
                rows = min(step, self.n_pool - start)
                chunk = np.fromfile(f, dtype=np.float32, count=rows * self.width).reshape(rows, self.width)
                parts.append((features @ torch.from_numpy(chunk).to(features.device).T).double())
        return torch.cat(parts, dim=1)

    def _pool_features(self, c: int, device: torch.device) -> torch.Tensor:
        """(N, k) state c's pool features on ``device`` (read back from disk when kept there)."""
        if self.pool_features:
            return self.pool_features[c]
        return torch.from_numpy(np.load(self.files[c])).to(device)

    def score(self, targets: list[Example]) -> np.ndarray:
        device = lm.model_device(self.prepared.lm.model)
        total = torch.zeros(len(targets), self.n_pool, dtype=torch.float64, device=device)
        for c, state in enumerate(self.prepared.states):
            self.load(state)
            features = self.transform_target(state, self.target_rep(state, targets))
            total += state.weight * self._pool_dots(c, features)
        # (T, N) = sum of w_c * <target rep, train rep>; for gradients, a step on the train example
        # changes the target's loss by -lr * g_target . g_train, so positive = helpful
        return gradients.to_scores(total, "TN", +1, len(targets), self.n_pool)
