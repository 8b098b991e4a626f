"""Python's garbage collector in the command-line programs (train, finetune, evaluate): paused while
they import, and never again walking what the imports created.

Importing torch, Lightning, torchmetrics, Hydra and wandb creates about a million long-lived objects.
The collector runs a full collection each time the heap has grown by a quarter, walking all of them:
6 full collections, ~0.6 s of a 6 s start-up on a 2-core machine (counted with `gc.callbacks`),
which found almost nothing to free (imports make little cyclic garbage). At exit the interpreter's
final collections walk them once more (~0.8 s). So:

- `lmpretrain/__init__.py` calls `pause_if_program()` first thing: the collector is off when the
  process is one of these programs (`python -m lmpretrain.train`, `lmp-train`, ...) and nothing else:
  importing lmpretrain from a script, a notebook or a test leaves the collector alone.
- `freeze_imports()`, at the start of the program's body (every import done), runs one full
  collection (the garbage of composing the config), moves every object that is left into the
  permanent generation (`gc.freeze()`, Python's tool for this), turns the collector back on for
  what the run creates, and has the exit freeze again so the interpreter's last collections walk
  only what is left. Objects created during the run are collected as usual.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

PROGRAMS = ("train", "finetune", "evaluate")
_state = {"paused": False, "frozen": False}


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


def pause_if_program() -> None:
    argv0 = (getattr(sys, "argv", None) or [""])[0]  # an embedding interpreter may set no argv
    if not _state["paused"] and gc.isenabled() and is_program(getattr(sys, "orig_argv", []), argv0):
        gc.disable()
        _state["paused"] = True


def _freeze_for_exit() -> None:
    gc.disable()
    gc.freeze()


def freeze_imports() -> None:
    """Once per process, where pause_if_program() paused the collector: collect once, freeze what is
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
