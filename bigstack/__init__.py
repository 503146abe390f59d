"""bigstack: align and stack astronomical frames out of core.

The public API is small:

- :func:`open_frames` opens a set of frame files as a lazy
  ``xarray.DataArray`` with dims ``(frame, y, x)``.
- :func:`find_transforms` registers frames on many stars (rotation, flips).
- :mod:`bigstack.synthetic` writes frames with known truth (tests, demo).
- :mod:`bigstack.imaging` is the tutorial-compatible facade.

Conventions: images are indexed ``[y, x]``; positions and shifts are
written ``[x, y]``.
"""

from ._calibrate import Cosmetic, calibrate, load_master, make_master, save_master
from ._errors import (
    BigstackError,
    BigstackWarning,
    FrameError,
    FrameNotFoundError,
    IncompleteStoreError,
    StoreExistsError,
)
from ._io import open_frames
from ._night import plan_night, stack_night
from ._quality import frame_quality
from ._register import StarNotFoundError, find_shifts, find_star
from ._reject import Rejection
from ._render import crop, display, save_fits, save_png, save_tiff
from ._stack import stack
from ._store import open_stack
from ._transforms import find_transforms

__version__ = "0.1.0"

__all__ = [
    "BigstackError",
    "BigstackWarning",
    "Cosmetic",
    "FrameError",
    "FrameNotFoundError",
    "IncompleteStoreError",
    "Rejection",
    "StarNotFoundError",
    "StoreExistsError",
    "calibrate",
    "crop",
    "display",
    "find_shifts",
    "find_transforms",
    "find_star",
    "frame_quality",
    "load_master",
    "make_master",
    "save_master",
    "stack",
    "open_frames",
    "open_stack",
    "plan_night",
    "stack_night",
    "save_fits",
    "save_png",
    "save_tiff",
    "__version__",
]
