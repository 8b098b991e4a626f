"""User-facing errors.

Anything the user can fix (a missing corpus, a bad option, a diverged run) raises a subclass of
`LMPretrainError`. Entrypoints catch it and print one line, `error: <message>`, and exit non-zero,
instead of a traceback wall. The message must name the problem *and* the fix.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar


class LMPretrainError(Exception):
    """A problem with the user's input or configuration; the message says how to fix it."""

    exit_status = 2


class ConfigError(LMPretrainError):
    """A config value that cannot work (checked before training starts)."""


class DataError(LMPretrainError):
    """A corpus that is missing, empty, unreadable or not UTF-8."""


class TrainingDivergedError(LMPretrainError):
    """The loss became NaN/inf; earlier checkpoints are left untouched."""


class Preempted(LMPretrainError):
    """SIGTERM/SIGUSR1 stopped the run after it saved a resumable checkpoint. The process exits with
    128 + the signal number (143 for SIGTERM, 138 for SIGUSR1), as if the signal had ended it, so a
    scheduler sees an unfinished job."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + int(signum)


F = TypeVar("F", bound=Callable)


def missing_values_error(keys) -> ConfigError:
    """Config values marked `???` (required, no default: `task.teacher` of task=spam_distill) that the
    command did not set."""
    keys = sorted(str(k) for k in keys)
    one = len(keys) == 1
    settings = " ".join(f"{k}=..." for k in keys)
    return ConfigError(f"{', '.join(keys)} {'is' if one else 'are'} required but unset (`???` in the "
                       f"config); set {'it' if one else 'them'} on the command line: {settings}")


def find_user_error(e: BaseException | None) -> LMPretrainError | None:
    """The LMPretrainError behind `e`, also when a library wrapped it (Hydra's instantiate does). An
    OmegaConf `???` value read before anything checked it counts as one too."""
    while e is not None:
        if isinstance(e, LMPretrainError):
            return e
        if type(e).__name__ == "MissingMandatoryValue":  # omegaconf.errors: not imported for the name alone
            return missing_values_error([getattr(e, "full_key", None) or "a required value"])
        e = e.__cause__ or e.__context__
    return None


def exit_on_user_error(fn: F) -> F:
    """Wrap an entrypoint so user errors end with one line on stderr and exit status 2 (a preempted
    run: 128 + the signal number)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            user_error = find_user_error(e)
            if user_error is None:
                raise
            # One write of the whole line: print() writes the text and its newline separately, and
            # with ddp the ranks share stderr, so two ranks' lines ran together on one line.
            sys.stderr.write(f"error: {user_error}\n")
            sys.stderr.flush()
            sys.exit(user_error.exit_status)

    return wrapper  # type: ignore[return-value]


def exit_missing_extra(command: str, package: str, extra: str) -> NoReturn:
    """For the stand-ins of Hydra plugins that an extra installs (hydra_plugins/): Hydra builds a
    plugin outside any entrypoint's error handling, and wraps exceptions into a traceback, but lets
    SystemExit through."""
    sys.stderr.write(f"error: {command} needs {package}, which is not installed: pip install 'lmpretrain[{extra}]'\n")
    sys.stderr.flush()
    sys.exit(2)
