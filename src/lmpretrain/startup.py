"""How the command-line programs (train, finetune, evaluate) set up the process: Python's garbage
collector paused while they import and never again walking what the imports created, and glibc's
allocator keeping freed memory for the next step (`keep_freed_memory`).

Importing torch, Lightning, torchmetrics, Hydra and wandb creates about a million long-lived objects.
The collector runs a full collection each time the heap has grown by a quarter, walking all of them:
6 full collections, ~0.6 s of a 6 s start-up on a 2-core machine (counted with `gc.callbacks`),
which found almost nothing to free (imports make little cyclic garbage). At exit the interpreter's
final collections walk them once more (~0.8 s). So:

- `lmpretrain/__init__.py` calls `configure_if_program()` first thing: the collector is off when the
  process is one of these programs (`python -m lmpretrain.train`, `lmp-train`, ...) and nothing else:
  importing lmpretrain from a script, a notebook or a test leaves the collector alone.
- `freeze_imports()`, at the start of the program's body (every import done), runs one full
  collection (the garbage of composing the config), moves every object that is left into the
  permanent generation (`gc.freeze()`, Python's tool for this), turns the collector back on for
  what the run creates, and has the exit freeze again so the interpreter's last collections walk
  only what is left. Objects created during the run are collected as usual.

The allocator: a CPU training step allocates each activation (1.5 MB per layer of shakespeare_char's
model) and frees it in backward. glibc's malloc gives the free top of its heap back to the OS once it
exceeds 2x the largest chunk lately freed (its dynamic trim threshold, a few MB), and the next step
faults the pages in again: in a bare loop of that model, 750-1,250 page faults and 2-3 ms of kernel
time per ~30 ms step; in the whole program ~200 per step (its other allocations often pin the heap's
top). `keep_freed_memory` raises the trim threshold to 1 GiB and fixes the mmap threshold (which ends
glibc's dynamic adjustment), as jemalloc and tcmalloc behave by design (PyTorch's CPU performance
guide recommends them), so the next step reuses the memory. Measured (bench/RESULTS.md): 13-20% less
time per step in the bare loop, ~5% more tokens/s in the program (median of 4 alternating pairs),
peak RSS +6 MB; the memory is not given back before the program ends. `LMPRETRAIN_KEEP_FREED_MEMORY=0`,
or the process's own `MALLOC_TRIM_THRESHOLD_` / `MALLOC_MMAP_THRESHOLD_`, leave glibc as it is.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import os
import sys

PROGRAMS = ("train", "finetune", "evaluate")
_state = {"paused": False, "frozen": False}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
TRIM_THRESHOLD = 1 << 30
MMAP_THRESHOLDS = (256 << 20, 32 << 20)  # the first glibc accepts: 32 MiB is the most older versions take


def is_program(orig_argv: list[str], argv0: str) -> bool:
    """Whether the command line runs one of PROGRAMS: `python [opts] -m lmpretrain.<program> ...` or
    the console script `lmp-<program>`."""
    if os.path.basename(argv0) in {f"lmp-{p}" for p in PROGRAMS}:
        return True
    args = iter(orig_argv[1:])  # the interpreter's options, up to -m MODULE, -c CODE or a script
    for arg in args:
        if arg == "-m":
            return next(args, None) in {f"lmpretrain.{p}" for p in PROGRAMS}
        if arg in ("-X", "-W"):
            next(args, None)  # the option's value
        elif arg == "-c" or not arg.startswith("-"):
            return False
    return False


def configure_if_program() -> None:
    """In one of PROGRAMS only: pause the collector and keep freed memory (the module's doc says why)."""
    argv0 = (getattr(sys, "argv", None) or [""])[0]  # an embedding interpreter may set no argv
    if _state["paused"] or not is_program(getattr(sys, "orig_argv", []), argv0):
        return
    keep_freed_memory()
    if gc.isenabled():
        gc.disable()
        _state["paused"] = True


def keep_freed_memory() -> bool:
    """glibc's malloc keeps up to TRIM_THRESHOLD of freed memory at the top of its heap and serves
    allocations below the mmap threshold from the heap, so freed activations are reused instead of
    unmapped and faulted in again. False (nothing changed) off glibc, when the user opted out or set
    glibc's own variables."""
    if (sys.platform != "linux" or os.environ.get("LMPRETRAIN_KEEP_FREED_MEMORY", "1") == "0"
            or "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not any(mallopt(M_MMAP_THRESHOLD, size) == 1 for size in MMAP_THRESHOLDS):
        return False  # not glibc's malloc (musl's mallopt refuses everything)
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


def _freeze_for_exit() -> None:
    gc.disable()
    gc.freeze()


def freeze_imports() -> None:
    """Once per process, where configure_if_program() paused the collector: collect once, freeze what is
    left, collect again from here on, and freeze once more at exit. A no-op elsewhere (tests, notebooks), and on a
    second call (the next job of a Hydra multirun), so a finished job's objects stay collectable."""
    if not _state["paused"] or _state["frozen"]:
        return
    # One full collection first: composing the config (Hydra composes it twice) leaves OmegaConf
    # nodes in reference cycles (each points to its parent) that only the collector frees; frozen,
    # they would stay for good (+12 MB peak RSS in shakespeare_char).
    gc.collect()
    gc.freeze()
    gc.enable()
    atexit.register(_freeze_for_exit)  # registered early: runs after the handlers of wandb, logging, ...
    _state["frozen"] = True
