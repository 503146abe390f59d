"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from astropy.io import fits


class _Counter:
    value = 0


def _rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


@contextlib.contextmanager
def bytes_read():
    """Count the bytes this process reads through system calls (Linux ``rchar``).

    This is the kernel's count, independent of bigstack's own code. It
    includes reads of ``/proc/self/io`` itself, which are measured once
    and subtracted.
    """
    probe0 = _rchar()
    probe1 = _rchar()
    overhead = probe1 - probe0
    counter = _Counter()
    start = _rchar()
    yield counter
    counter.value = _rchar() - start - overhead


def write_fits(path, data, *, bzero=None, bscale=None, **header) -> Path:
    """Write ``data`` as a FITS primary HDU with astropy (the reference writer)."""
    path = Path(path)
    hdu = fits.PrimaryHDU(np.array(data))  # a copy: astropy scales in place
    if bzero is not None or bscale is not None:
        hdu.scale("int16", bzero=bzero or 0.0, bscale=bscale or 1.0)
    for key, value in header.items():
        hdu.header[key.replace("_", "-")] = value
    hdu.writeto(path)
    return path


@contextlib.contextmanager
def raise_if_dask_computes(max_computes=0):
    """Fail when dask computes more than ``max_computes`` times inside the block.

    Proves that building a graph (``stack`` without a store, ``compute=False``)
    reads no pixels: every dask compute goes through this scheduler.
    """
    import dask

    count = [0]

    def scheduler(dsk, keys, **kwargs):
        count[0] += 1
        if count[0] > max_computes:
            raise RuntimeError(f"dask computed {count[0]} time(s) (allowed {max_computes})")
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=scheduler):
        yield
