"""The kit's own errors: what the user gave or has is wrong; the message says which file, key or value, and what
to do.

Every error the kit raises on purpose is a :class:`KitError`. The command line prints a KitError's message alone and
exits with 2; any other exception is a bug (or something the kit did not foresee) and keeps its traceback.

Each kind is also the built-in exception a Python caller would expect (a bad value is still a ValueError, a missing
file still a FileNotFoundError), so `except ValueError` in a notebook keeps working. This module imports nothing
of the kit's.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

TRACEBACK_ENV = "SMOLVLA_KIT_TRACEBACK"  # set to 1 to see where a KitError was raised


class KitError(Exception):
    """Bad input, a missing file or device, a refused setting: the message names it and says what to do."""


class InputError(KitError, ValueError):
    """A value the kit was given is wrong: a setting or flag, an observation's shape, a file's contents."""


class InputTypeError(KitError, TypeError):
    """A value the kit was given has the wrong type (a config field, a frame that is not a dict)."""


class MissingFile(KitError, FileNotFoundError):
    """A file or folder the kit needs is not there (a checkpoint, a tokenizer, a calibration, a stats file)."""


class MissingKey(KitError, KeyError):
    """A key the kit needs is absent (an observation's state, a stats entry, a register or a motor name)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class HubError(KitError, OSError):
    """The Hugging Face Hub could not give what was asked (offline and not cached, not found, not allowed)."""


class Unsupported(KitError, NotImplementedError):
    """A checkpoint or setting uses something the kit does not implement."""


class NonFinite(KitError, FloatingPointError):
    """NaN or infinity where a number is needed (a loss, an action, a weight, a statistic)."""


class CameraMismatch(MissingKey):
    """Two sides disagree on the camera keys (a policy and a robot, a batch, or a dataset's camera map)."""


def exit_code(command: Callable[[], int | None]) -> int:
    """Run a command-line entry point and turn its end into an exit code: what it returns (0 for None); 2 with the
    message alone for a KitError; 130 on Ctrl-C. Any other exception propagates with its traceback.

    This is the kit's one error handler: `smolvla-kit` and every module that can be run on its own go through it.
    """
    try:
        return int(command() or 0)
    except KeyboardInterrupt:
        print("\ninterrupted: what finished before this point is kept; collect and train resume when run again.",
              file=sys.stderr)
        return 130
    except KitError as err:
        # The kit's messages name the file, key or value and what to do; a traceback would bury them.
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {err}", file=sys.stderr)
        print(f"({TRACEBACK_ENV}=1 shows where it was raised)", file=sys.stderr)
        return 2


__all__ = ["CameraMismatch", "HubError", "InputError", "InputTypeError", "KitError", "MissingFile", "MissingKey",
           "NonFinite", "Unsupported", "exit_code"]
