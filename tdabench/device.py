"""Where torch work runs and in what precision: ``--device auto|cpu|cuda|cuda:N``, ``--dtype fp32|bf16``.

* ``auto`` is CUDA when torch sees a GPU, else the CPU. ``cuda`` means every visible GPU where
  work can be spread (one ground-truth worker per GPU) and the current GPU elsewhere;
  ``cuda:N`` one GPU (resolving it makes N the process's current CUDA device, which the
  libraries that only say ``"cuda"`` (traker, kronfluence) then use).
* ``fp32`` runs every op in float32: on the CPU this is the code path of every earlier
  version, bit for bit. ``bf16`` runs the forward passes under ``torch.autocast`` with
  bfloat16 (matmuls in bf16, reductions and losses in float32; weights, gradients and the
  optimizer stay in the model's own dtype). It is refused on the CPU: CPU autocast to bf16 is
  slow on most CPUs and would only change the numbers, so there is nothing to gain.
* ``micro_batch`` (fine-tunes only): 0 takes each batch of the recipe whole and, should CUDA run
  out of memory, splits it in halves (then quarters, ...) and accumulates their gradients;
  k > 0 always splits it into pieces of at most k examples. Either way each optimizer step is
  the step of the whole batch (same mean loss over its response tokens), up to float rounding.

The GPU path is written device-generically but has not been run on a GPU in this repository's
own tests (see the README); ``tdabench selftest --device cuda`` checks it where one is present.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from tdabench.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class Device:
    """A resolved device: ``name`` ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``dtype`` ``"fp32"`` or
    ``"bf16"``; ``micro_batch`` as in the module docstring. Picklable (sent to workers)."""

    name: str = "cpu"
    dtype: str = "fp32"
    micro_batch: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda")

    @property
    def index(self) -> int | None:
        """The GPU's index (``cuda:N``), the current one for ``cuda``, None on the CPU."""
        if not self.is_cuda:
            return None
        return int(self.name.split(":", 1)[1]) if ":" in self.name else torch.cuda.current_device()

    @property
    def suffix(self) -> str:
        """Added to cache paths of what the precision changes (banks, reference models):
        empty for fp32, so that CPU paths stay those of earlier versions."""
        return "" if self.dtype == "fp32" else f"-{self.dtype}"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA for ``bf16``; nothing at all for ``fp32``."""
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def synchronize(self) -> None:
        """Wait for the GPU's queued work (nothing on the CPU)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.index)

    def n_workers(self) -> int:
        """Ground-truth workers this device takes: one per GPU (all visible ones for ``cuda``)."""
        if not self.is_cuda:
            raise ValueError("n_workers is for CUDA devices; CPU workers are --workers")
        return torch.cuda.device_count() if self.name == "cuda" else 1

    def for_worker(self) -> Device:
        """The GPU of this worker process: ``cuda`` becomes ``cuda:i`` with i taken from the
        process's index in its pool (multiprocessing numbers a parent's children 1, 2, ...;
        consecutive children land on different GPUs); the main process and Ray actors (whose
        visible GPU Ray sets) get ``cuda:0``. Sets it as the current CUDA device."""
        if self.name != "cuda":
            if self.is_cuda:
                torch.cuda.set_device(self.index)
            return self
        identity = multiprocessing.current_process()._identity
        index = (identity[0] - 1) % torch.cuda.device_count() if identity else 0
        torch.cuda.set_device(index)
        return replace(self, name=f"cuda:{index}")

    def describe(self) -> dict[str, Any]:
        """What records and bank manifests say about where they were computed."""
        out: dict[str, Any] = {"device": self.name, "dtype": self.dtype, "gpu": None}
        if self.is_cuda:
            out.update(gpu=torch.cuda.get_device_name(self.index), cuda=torch.version.cuda,
                       gpus=self.n_workers())
        if self.micro_batch:
            out["micro_batch"] = self.micro_batch
        return out


CPU = Device()


@dataclass(frozen=True)
class Compute:
    """Where a run's work goes, resolved once from the command line and handed to every phase:
    ``workers`` processes for fine-tunes (ground truth, and banks a method builds), run by
    ``executor`` (``"local"`` or ``"ray"``, at ``address``; None starts a local Ray instance),
    and the :class:`Device` every torch phase runs on (its dtype and micro-batch included)."""

    workers: int = 1
    executor: str = "local"
    address: str | None = None
    device: Device = CPU


CPU_COMPUTE = Compute()


def resolve(device: str = "auto", dtype: str = "fp32", micro_batch: int = 0) -> Device:
    """Check and resolve the command-line choices (see the module docstring)."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown --dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if micro_batch < 0:
        raise ConfigError(f"--micro-batch must be >= 0 (0: whole batches), not {micro_batch}")
    name = device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ConfigError(f"unknown --device {device!r}; use one of {', '.join(DEVICES)}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} asks for CUDA, which this torch ({torch.__version__}) "
                             "does not see; use --device cpu (or auto)")
        if ":" in name and int(name[5:]) >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if ":" in name:
            torch.cuda.set_device(int(name[5:]))
    elif dtype == "bf16":
        raise ConfigError("--dtype bf16 is bf16 autocast on a GPU; on the CPU use --dtype fp32")
    return Device(name, dtype, micro_batch)


@contextlib.contextmanager
def peak_memory(device: Device) -> Iterator[dict[str, int | None]]:
    """Measure the peak GPU memory that torch allocates inside the block: the yielded dict's
    ``"bytes"`` is set on exit (None on the CPU). The GPU's peak counter is reset on entry."""
    out: dict[str, int | None] = {"bytes": None}
    if device.is_cuda:
        torch.cuda.reset_peak_memory_stats(device.index)
    try:
        yield out
    finally:
        if device.is_cuda:
            device.synchronize()
            out["bytes"] = int(torch.cuda.max_memory_allocated(device.index))
