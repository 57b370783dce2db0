"""ELIT Lab's own exceptions: one family, one line each, the same in the API and the CLI.

Every error a user can cause by what they type or hand in is one of these. Each
message names the file or the value at fault and what to do about it, so the
``elit`` command prints it as a single line (exit code 2) and the Python API
raises the very same exception with the very same words.

They subclass the built-in type a Python user would expect (``ValueError`` for a
bad value or image, ``FileExistsError`` for an output conflict), so existing
``except ValueError`` code keeps working.

Example
-------
>>> try:
...     raise BadValueError("--threshold 2 is not a probability; use a value between 0 and 1.")
... except ElitError as error:
...     print(error)
--threshold 2 is not a probability; use a value between 0 and 1.
>>> issubclass(BadImageError, ValueError)
True
"""

from __future__ import annotations


class ElitError(Exception):
    """Base of every error a user can act on (the CLI prints it as one line, exit code 2)."""


class BadValueError(ElitError, ValueError):
    """A number or option out of its range, of the wrong kind, or in the wrong unit."""


class BadImageError(ElitError, ValueError):
    """An image (file or array) that cannot be used: unreadable, wrong shape or dtype, NaN, constant, too small."""


class BadModelFolderError(ElitError, ValueError):
    """A model folder that is incomplete, inconsistent or not an ELIT Lab ensemble at all."""


class OutputConflictError(ElitError, FileExistsError):
    """An output that would overwrite an input, another output or a user's earlier results."""
