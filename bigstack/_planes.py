"""What a colour file gives: its R, G, B planes, one of them, or grey.

Shared by the readers of formats that can hold colour (TIFF, XISF, SER,
FITS cubes, PNG/JPEG). The contract with the rest of bigstack: a colour
cube has dims ``("frame", "channel", "y", "x")`` with channel coordinate
``["R", "G", "B"]``; a frame source with colour planes has
``planes == ("R", "G", "B")`` and ``read(y0, y1, x0, x1, plane)`` returns
the plane named.

``open_frames(..., colour=None, channel=None)`` chooses, per file:

- a mono file is mono whatever ``colour`` says (a ``channel`` is an error);
- ``channel="R"|"G"|"B"`` keeps that plane, ``channel="grey"`` the grey
  mix (weights R 0.2126, G 0.7152, B 0.0722, as the tutorial's
  ``load_image``);
- otherwise ``colour=True`` keeps the planes, ``colour=False`` makes grey,
  and ``colour=None`` takes the format's default: colour for TIFF, XISF,
  SER and FITS, grey for PNG and JPEG (the tutorial turns those grey).
"""

from __future__ import annotations

import numpy as np

from ._errors import FrameError

RGB = ("R", "G", "B")
GREY = "grey"
GREY_WEIGHTS = (0.2126, 0.7152, 0.0722)


def choose(path, rgb: bool, channel=None, colour=None, default_colour=True):
    """``None`` (keep the planes, or the one plane of a mono file), a colour, or ``"grey"``."""
    if not rgb:
        if channel is not None:
            raise FrameError(path, f"channel={channel!r}: the file holds one (mono) plane, "
                                   "not colour")
        return None
    if channel is not None:
        if channel not in (*RGB, GREY):
            raise FrameError(path, f"channel={channel!r} is not one of R, G, B, grey")
        return channel
    if colour is None:
        colour = default_colour
    return None if colour else GREY


def planes_of(rgb: bool, pick) -> tuple | None:
    """The ``planes`` of a source: ``("R", "G", "B")`` when it keeps them, else None."""
    return RGB if rgb and pick is None else None


def take(block, want, axis=-1) -> np.ndarray:
    """Plane ``want`` ("R", "G", "B" or "grey") of an R, G, B ``block`` as float32."""
    block = np.asarray(block)
    if want == GREY:
        parts = [np.take(block, i, axis=axis).astype(np.float64) for i in range(3)]
        grey = parts[0] * GREY_WEIGHTS[0] + parts[1] * GREY_WEIGHTS[1]
        grey += parts[2] * GREY_WEIGHTS[2]
        return grey.astype(np.float32)
    return np.take(block, RGB.index(want), axis=axis).astype(np.float32)


# --------------------------------------------------------------------------
# PNG / JPEG kept in colour (the grey default is ImageSource in _io)


from dataclasses import dataclass, field  # noqa: E402


@dataclass(frozen=True)
class ColourImageSource:
    """A PNG or JPEG frame kept in colour (or one of its planes), decoded whole."""

    path: str
    shape: tuple[int, int]
    rgb: bool
    pick: str | None = None
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)

    by_rows = False

    @property
    def planes(self):
        return planes_of(self.rgb, self.pick)

    def read(self, y0, y1, x0, x1, plane=None):
        from ._io import _check_decoded, _check_unchanged, _decode_image, _read_bytes

        _check_unchanged(self.path, self.stamp)
        data = _decode_image(self.path, _read_bytes(self.path))
        if data.ndim == 2:
            data = data[..., None]
        _check_decoded(self.path, data.shape[:2], self.shape)
        if data.shape[2] < 3:
            if self.rgb:
                raise FrameError(self.path, "decodes to grey, not the colour its header "
                                            "announced when opened")
            return data[y0:y1, x0:x1, 0].astype(np.float32)
        want = plane if plane is not None else self.pick
        return take(data[y0:y1, x0:x1, :3], want)


def inspect_colour_image(path, channel=None, colour=None) -> ColourImageSource:
    """A PNG/JPEG read in colour or as one plane: its size and whether it is colour."""
    from ._io import _PNG_SIGNATURE, _decode_image, _read_bytes, inspect_image, is_url

    grey = inspect_image(path)
    if is_url(path):
        head = _read_bytes(path)[:26]
    else:
        with open(path, "rb") as f:
            head = f.read(26)
    if head.startswith(_PNG_SIGNATURE):
        rgb = len(head) > 25 and head[25] in (2, 3, 6)  # IHDR colour type
    else:  # JPEG: its components are in the frame header; decode once to be sure
        data = _decode_image(path, _read_bytes(path))
        rgb = data.ndim == 3 and data.shape[2] >= 3
    pick = choose(path, rgb, channel, colour, False)
    return ColourImageSource(path=grey.path, shape=grey.shape, rgb=rgb, pick=pick,
                             stamp=grey.stamp)
