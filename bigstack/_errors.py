"""Exceptions and warnings raised by bigstack.

Every error that concerns an input names the file (or the frame index) and
the problem, so that a 500-frame run that fails tells the user which frame
to look at.
"""

from __future__ import annotations


class BigstackError(Exception):
    """Base class of bigstack's own errors."""


class FrameError(BigstackError, ValueError):
    """A frame file cannot be used: missing, corrupt, unsupported or of the wrong shape.

    Parameters
    ----------
    path : str
        The file the problem is about.
    problem : str
        What is wrong, in a few words.
    """

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keeps the error picklable across dask workers
        return type(self), (self.path, self.problem)


class StoreExistsError(BigstackError, FileExistsError):
    """An output store exists already and ``overwrite`` was not asked for."""


class IncompleteStoreError(BigstackError):
    """A store's stack was not finished (a killed or interrupted run).

    Parameters
    ----------
    store : str
        The store.
    missing, total : int or None
        Tiles not yet written, and tiles in all (``None`` when not known).
    """

    def __init__(self, store, missing, total):
        self.store = str(store)
        self.missing = None if missing is None else int(missing)
        self.total = None if total is None else int(total)
        count = ("some tiles missing" if self.missing is None or self.total is None
                 else f"{self.missing} of {self.total} tiles missing")
        super().__init__(
            f"{self.store}: incomplete stack ({count}); "
            "finish it with --resume (mode='resume'), or pass --allow-incomplete "
            "(allow_incomplete=True) to use it with the missing area as NaN"
        )

    def __reduce__(self):
        return type(self), (self.store, self.missing, self.total)


class BigstackWarning(UserWarning):
    """A problem bigstack worked around (a flagged frame, a clipped box)."""


class FrameNotFoundError(FrameError, FileNotFoundError):
    """No frame file matches a pattern, or a named frame file does not exist."""
