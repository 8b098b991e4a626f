"""Training throughput and model FLOPs utilization (MFU), logged to every logger.

`train/tokens_per_sec` and `train/samples_per_sec` count what the optimizer consumed on all
ranks per wall-clock second. `train/mfu` = achieved model FLOPs / peak FLOPs of all devices, with
model FLOPs from the objective's `flops_per_token(seq_len)` (6N + attention, forward + backward; or
`flops_per_batch(batch)` where parts of the network run on other lengths, as seq2seq's decoder;
activation recomputation is not counted, as in PaLM's definition) and the peak from `PEAK_FLOPS`
(GPUs) or, on a CPU, the best matmul rate ever measured on this machine (`cpu_peak_flops`).
MFU is never above 1: a window that runs faster than the peak proves the peak was under-measured
(a busy machine when it was probed), so that rate becomes the peak, and on a CPU is kept for later runs.
Validation time is excluded: the window restarts after each validation run. Windows are otherwise
back to back, so the time between batches (data loading, the loop's own work) counts; on a GPU the
clock is read after the device finished the window's kernels (on an H200, one-batch windows without
either logged GPT-2's MFU at 1.2-1.8x the rate measured with both).
"""

from __future__ import annotations

import functools
import json
import logging
import platform
import time
from pathlib import Path

import lightning as L
import torch

from lmpretrain.atomic import DiskFullError, atomic_write_json
from lmpretrain.clock import seconds_since_process_start
from lmpretrain.paths import cache_root

log = logging.getLogger(__name__)

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
    # A generator of its own: drawing from the global one shifted the dropout masks of a run whose
    # cache was cold (the first run on a machine) against the same run with the peak cached.
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, dtype=dtype, generator=gen), torch.randn(n, n, dtype=dtype, generator=gen)
    a @ b  # warm-up: thread pool, page faults
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def _cpu_key(dtype: torch.dtype) -> str:
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    return f"{model} | {torch.get_num_threads()} threads | {str(dtype).removeprefix('torch.')}"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _peak_file() -> Path:
    # v2: until 2026-12-03 MLM and span corruption over-counted their FLOPs (head and decoder on
    # every token), and a window "faster than the peak" raised the peak kept in the v1 file
    return cache_root() / "cpu_peak_flops_v2.json"


def _read_peaks() -> dict[str, float]:
    try:
        peaks = json.loads(_peak_file().read_text())
        return {k: float(v) for k, v in peaks.items()} if isinstance(peaks, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def remember_cpu_peak(dtype: torch.dtype, flops: float) -> float:
    """Keep the best FLOP/s seen for this CPU model, thread count and dtype; return that best."""
    peaks = _read_peaks()
    key = _cpu_key(dtype)
    if flops > peaks.get(key, 0.0):
        peaks[key] = flops
        try:
            _peak_file().parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(_peak_file(), peaks)
        except (OSError, DiskFullError):  # a read-only cache only costs the memory of the peak
            pass
    return peaks.get(key, flops)


def cpu_peak_flops(dtype: torch.dtype = torch.float32) -> float:
    """The cached best for this CPU, thread count and dtype; measured (256 up to 2048 matmuls, ~1 s)
    only when there is none. A peak probed while other work ran is too low: any training window
    that runs faster replaces it (`TokenThroughput`), never the other way round."""
    cached = _read_peaks().get(_cpu_key(dtype))
    if cached:
        return cached
    best = 0.0
    for n in (256, 512, 1024, 2048):
        best = max(best, measured_cpu_peak_flops(dtype, n))
        # Stop growing once one matmul takes over 50 ms: bf16 emulated on an AVX2 CPU (~1 GFLOP/s)
        # would spend a minute on a 2048 matmul, at the start of every run with an empty cache.
        if 2 * (2 * n) ** 3 / best > 0.05:
            break
    return remember_cpu_peak(dtype, best)


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device at the Trainer's precision; None for an unlisted GPU."""
    dtype = "bf16" if "bf16" in precision else "fp32"
    if device.type == "cpu":
        return cpu_peak_flops(torch.bfloat16 if dtype == "bf16" else torch.float32)
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
        self.tokens_seen = 0  # over the whole run, resumed from the checkpoint: an x axis for dashboards
        self._startup_logged = False
        self._cuda: torch.device | None = None  # the GPU whose queued kernels a window waits for
        self._per_token: dict[int, float | None] = {}  # seq_len -> FLOPs per token (counting parameters each step cost ~1 ms)

    def _reset(self, start: float | None = None) -> None:
        self._start, self._tokens, self._samples, self._flops, self._batches = start, 0, 0, 0, 0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._per_token = {}  # counted for this fit's module, not one an earlier fit of this Trainer ran
        peak = self.peak_flops_per_device or peak_flops(pl_module.device, str(trainer.precision))
        # Rank 0's figure everywhere: a CPU peak measured while other ranks compete would differ per rank.
        self._peak = trainer.strategy.broadcast(peak, src=0)
        self._cuda = pl_module.device if pl_module.device.type == "cuda" else None
        self._cpu_dtype = (None if pl_module.device.type != "cpu" else
                           torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._startup_logged:
            self._log_startup(trainer)
        ids = batch["input_ids"]  # (B, T) on each rank; all ranks run the same shapes
        tokens = ids.numel() * trainer.world_size
        self._tokens += tokens
        self.tokens_seen += tokens
        self._samples += ids.size(0) * trainer.world_size
        per_batch = getattr(pl_module, "flops_per_batch", None)  # parts of the network see other lengths
        if per_batch is not None:
            self._flops += (per_batch(batch) or 0) * trainer.world_size
        else:
            seq_len = ids.size(-1)
            if seq_len not in self._per_token:
                self._per_token[seq_len] = getattr(pl_module, "flops_per_token", lambda _: None)(seq_len)
            per_token = self._per_token[seq_len]
            self._flops += per_token * tokens if per_token else 0
        self._batches += 1
        if self._batches >= (self.window or trainer.log_every_n_steps):
            if self._cuda is not None:  # kernels still queued belong to this window
                torch.cuda.synchronize(self._cuda)
            now = time.perf_counter()
            elapsed = now - self._start
            metrics = {"train/tokens_per_sec": self._tokens / elapsed, "train/samples_per_sec": self._samples / elapsed,
                       "train/tokens_seen": float(self.tokens_seen)}
            if self._flops:
                metrics["train/tflops_per_sec"] = self._flops / elapsed / 1e12
                if self._peak:
                    per_device = self._flops / elapsed / trainer.world_size
                    if per_device > self._peak:
                        self._raise_peak(per_device, trainer)
                    metrics["train/mfu"] = per_device / self._peak
            pl_module.log_dict(metrics)
            self._reset(start=now)  # the next window starts here: the wait for the next batch counts

    def _log_startup(self, trainer) -> None:
        """`train/startup_s`: seconds from the command's start (the process's creation time) to the
        end of the first training batch, once per process: what a user waits for before a run runs."""
        self._startup_logged = True
        if not trainer.is_global_zero:
            return
        startup = seconds_since_process_start()
        log.info("first training step done %.1f s after the command started", startup)
        for logger in trainer.loggers:
            logger.log_metrics({"train/startup_s": startup}, step=trainer.global_step)

    def _raise_peak(self, achieved: float, trainer) -> None:
        if trainer.is_global_zero:
            log.warning("train/mfu: %.3g FLOP/s achieved exceeds the peak of %.3g FLOP/s, which was "
                        "under-measured; the achieved rate is the peak from now on", achieved, self._peak)
        self._peak = achieved
        if self._cpu_dtype is not None and self.peak_flops_per_device is None and trainer.is_global_zero:
            remember_cpu_peak(self._cpu_dtype, achieved)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._reset()

    def state_dict(self) -> dict:
        return {"tokens_seen": self.tokens_seen}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens_seen = int(state_dict.get("tokens_seen", 0))
