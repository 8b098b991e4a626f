"""Training throughput and model FLOPs utilization (MFU), logged to every logger.

`train/tokens_per_sec` and `train/samples_per_sec` count what the optimizer consumed on all
ranks per wall-clock second. `train/mfu` = achieved model FLOPs / peak FLOPs of all devices, with
model FLOPs from the objective's `flops_per_token(seq_len)` (6N + attention, forward + backward;
activation recomputation is not counted, as in PaLM's definition) and the peak from `PEAK_FLOPS`.
Validation time is excluded: the window restarts after each validation run.
"""

from __future__ import annotations

import functools
import time

import lightning as L
import torch

# Dense peak FLOP/s per device, by (device name fragment, compute dtype); vendor datasheets.
# fp32 on GPUs counts TF32 tensor cores (torch's default for matmuls under `high` precision).
PEAK_FLOPS = {
    ("H200", "bf16"): 989e12, ("H200", "fp32"): 494e12,
    ("H100", "bf16"): 989e12, ("H100", "fp32"): 494e12,  # SXM; PCIe is ~25% lower
    ("A100", "bf16"): 312e12, ("A100", "fp32"): 156e12,
}


@functools.cache
def measured_cpu_peak_flops(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.3) -> float:
    """The best FLOP/s of an n x n matmul on this CPU (all threads): the practical peak, since a
    datasheet figure says nothing about the BLAS, the cores we get, or AVX-512/AMX being present."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: thread pool, page faults
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device at the Trainer's precision; None for an unlisted GPU."""
    dtype = "bf16" if "bf16" in precision else "fp32"
    if device.type == "cpu":
        return measured_cpu_peak_flops(torch.bfloat16 if dtype == "bf16" else torch.float32)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if "16" in precision:  # fp16 tensor-core peak equals bf16's on these parts
            dtype = "bf16"
        return next((v for (frag, dt), v in PEAK_FLOPS.items() if frag in name and dt == dtype), None)
    return None


class TokenThroughput(L.Callback):
    """Logs `train/tokens_per_sec`, `train/samples_per_sec`, and (when the objective can count its
    FLOPs and the device's peak is known) `train/tflops_per_sec` and `train/mfu`.

    window: batches per measurement (default: trainer.log_every_n_steps).
    peak_flops_per_device: overrides the table / the CPU measurement.
    """

    def __init__(self, window: int | None = None, peak_flops_per_device: float | None = None):
        self.window = window
        self.peak_flops_per_device = peak_flops_per_device
        self._peak: float | None = None
        self._start: float | None = None
        self._tokens = self._samples = self._flops = self._batches = 0

    def _reset(self) -> None:
        self._start, self._tokens, self._samples, self._flops, self._batches = None, 0, 0, 0, 0

    def on_fit_start(self, trainer, pl_module) -> None:
        peak = self.peak_flops_per_device or peak_flops(pl_module.device, str(trainer.precision))
        # Rank 0's figure everywhere: a CPU peak measured while other ranks compete would differ per rank.
        self._peak = trainer.strategy.broadcast(peak, src=0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ids = batch["input_ids"]  # (B, T) on each rank; all ranks run the same shapes
        tokens = ids.numel() * trainer.world_size
        self._tokens += tokens
        self._samples += ids.size(0) * trainer.world_size
        per_token = getattr(pl_module, "flops_per_token", lambda _: None)(ids.size(-1))
        self._flops += per_token * tokens if per_token else 0
        self._batches += 1
        if self._batches >= (self.window or trainer.log_every_n_steps):
            elapsed = time.perf_counter() - self._start
            metrics = {"train/tokens_per_sec": self._tokens / elapsed, "train/samples_per_sec": self._samples / elapsed}
            if self._flops:
                metrics["train/tflops_per_sec"] = self._flops / elapsed / 1e12
                if self._peak:
                    metrics["train/mfu"] = self._flops / elapsed / (self._peak * trainer.world_size)
            pl_module.log_dict(metrics)
            self._reset()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._reset()
