"""Synthetic frames in the formats that hold many frames or a mosaic: SER videos.

:func:`make_ser` renders the same scene as :func:`bigstack.synthetic.make_frames`
(same options, same seed, same truth) and writes every frame into one SER
video, mono, RGB or as a Bayer mosaic, one frame at a time (a long video
never sits in memory).
"""

from __future__ import annotations

import os

import numpy as np

BAYER_PATTERNS = ("RGGB", "GRBG", "GBRG", "BGGR")


def bayer_mosaic(rgb, pattern="RGGB") -> np.ndarray:
    """Sample ``(3, ny, nx)`` R, G, B planes through a Bayer filter: a ``(ny, nx)`` mosaic.

    ``pattern`` names the colours of the 2x2 cell row by row from pixel
    ``[0, 0]`` (RGGB: R at ``[0, 0]``, G at ``[0, 1]`` and ``[1, 0]``, B at
    ``[1, 1]``).
    """
    pattern = str(pattern).upper()
    if pattern not in BAYER_PATTERNS:
        raise ValueError(f"pattern must be one of {BAYER_PATTERNS}, not {pattern!r}")
    rgb = np.asarray(rgb)
    out = np.empty(rgb.shape[1:], rgb.dtype)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb["RGB".index(colour), dy::2, dx::2]
    return out


def make_ser(path, n_frames=10, shape=(256, 256), *, colour="mono", dtype="uint16", seed=0,
             sky=None, stars=None, camera=None, motion=None, artefacts=None, sensor=None,
             overwrite=False):
    """Write a seeded synthetic night as one SER video and return its truth.

    The frames are those :func:`bigstack.synthetic.make_frames` renders
    with the same options (``fmt="fits"`` for mono, the colour scene of
    ``fmt="png"`` for RGB and Bayer), so the truth (shifts, stars,
    transforms, ...) means the same. ``truth.paths`` lists the video once
    per frame, as ``open_frames`` does.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.ser`` file to write.
    colour : {"mono", "RGB", "BGR", "RGGB", "GRBG", "GBRG", "BGGR"}
        Mono frames, colour frames (three samples a pixel; BGR stores them
        reversed, as some cameras do) or a Bayer mosaic of the colour scene
        (:func:`bayer_mosaic`).
    dtype : {"uint16", "uint8"}
        Sample type.

    Examples
    --------
    >>> import os, tempfile
    >>> from bigstack import open_frames
    >>> from bigstack.synthetic import make_ser
    >>> path = os.path.join(tempfile.mkdtemp(), "night.ser")
    >>> truth = make_ser(path, n_frames=4, shape=(32, 48))
    >>> open_frames(path).shape
    (4, 32, 48)
    """
    from . import _synth_scene as _scene
    from . import synthetic as _s
    from ._ser import write_ser

    name = str(colour)
    key = name.lower() if name.lower() == "mono" else name.upper()
    if key not in ("mono", "RGB", "BGR", *BAYER_PATTERNS):
        raise ValueError(f"colour must be mono, RGB, BGR or a Bayer pattern {BAYER_PATTERNS}, "
                         f"not {colour!r}")
    if np.dtype(dtype).name not in ("uint8", "uint16"):
        raise ValueError(f"SER frames are uint8 or uint16, not dtype={dtype!r}")
    if key in BAYER_PATTERNS and (shape[0] % 2 or shape[1] % 2):
        raise ValueError(f"a Bayer video needs even sides, not shape {tuple(shape)}")
    path = os.fspath(path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(17, "file exists; pass overwrite=True to replace it", path)
    groups = {"sky": sky, "stars": stars, "camera": camera, "motion": motion,
              "artefacts": artefacts, "sensor": sensor}
    groups = {g: groups.get(g) or cls() for g, cls in _s.GROUPS.items()}
    fmt = "fits" if key == "mono" else "png"
    p = _s._resolve(n_frames, shape, fmt, np.dtype(dtype).name, seed, groups, None, 95,
                    "frame", overwrite)
    geom = _scene.geometry(p)
    p["shifts"] = geom["shifts"]
    scene = _scene.Scene(p, geom)
    dates = _scene.dates(p["start"], p["n_frames"], p["exptime"], p["gap"])
    cosmics = []
    out_dtype = np.dtype(dtype)

    def frames():
        for i in range(p["n_frames"]):
            values, hits = scene.render(i)
            cosmics.append(hits)
            values = values.astype(out_dtype)
            if key == "mono":
                yield values[0]
            elif key in ("RGB", "BGR"):
                yield np.moveaxis(values, 0, -1)
            else:
                yield bayer_mosaic(values, key)

    write_ser(path, frames(), colour="MONO" if key == "mono" else key, times=dates,
              overwrite=overwrite)
    truth = _s._truth(p, geom, scene, groups, [path] * p["n_frames"], dates, cosmics)
    truth.options["fmt"] = "ser"
    truth.options["colour"] = key
    return truth
