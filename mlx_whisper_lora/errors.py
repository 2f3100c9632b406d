"""User-facing errors: raised for bad input, printed by the CLIs as one line without a traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A mistake in what the user gave us (path, file, option); the message names it and the fix."""


class QuantizedBase(UserError):
    """The torch back end was given an MLX-quantized model (it loads floating-point weights)."""


def cli_entry(main):
    """Wrap a CLI `main` so that a UserError (or Ctrl-C) ends with one line and a non-zero status."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130)

    return wrapper
