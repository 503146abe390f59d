"""The life cycle of a stack store: check, create, resume, append, overwrite, finish, open.

:func:`bigstack.stack` writes its result into a zarr (format 3) store tile by
tile. Everything about that store that is not the combine itself lives here,
so that the hot path (:mod:`bigstack._combine`) only computes tiles.

Layout
------
``stack``, ``coverage`` and ``sum`` (or ``rejected``) ``(y, x)``, one zarr
chunk per tile, and the ``y``/``x`` coordinates. The group ``_bigstack``
keeps the book: ``tiles_done`` (one chunk per tile, so tile tasks never share
a chunk) and, during an append, the sums and coverage from before it. The
group's attributes are the provenance; ``attrs["bigstack"]`` is the marker
that says bigstack made the store, and ``attrs["pending"]`` describes the
operation under way until it is complete.

Safety rules
------------
- A store is recognised by its marker, never by its name. Stores written by
  bigstack 0.1 (no marker, but the ``_bigstack`` book and a ``pending``
  attribute) count as bigstack's.
- ``mode="overwrite"`` replaces only a bigstack store, and refuses when the
  path is the current folder or one of its parents, equals or contains an
  input frame, or holds anything bigstack did not write there.
- The store being replaced is moved aside (``<store>.bigstack-old-XXXXXXXX``)
  and deleted only once the new stack is complete, so an overwrite that fails
  part way leaves the old result in place beside the unfinished new one
  (which ``mode="resume"`` finishes).
- An unfinished store is never read as if it were finished: :func:`open_stack`
  refuses it unless ``allow_incomplete=True``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import threading
import uuid
import warnings

import numpy as np

from ._errors import BigstackError, BigstackWarning, IncompleteStoreError, StoreExistsError

MODES = ("write", "overwrite", "resume", "append")

MARKER = "bigstack"
BOOK = "_bigstack"
_LAYOUT = 1
# what bigstack writes at the top of a store, and inside each of its arrays
_TOP_LEVEL = {"zarr.json", "stack", "coverage", "sum", "rejected", "y", "x", BOOK}
_ARRAY_ENTRIES = {"zarr.json", "c"}


# --------------------------------------------------------------------------
# paths


def is_url(store):
    return isinstance(store, str) and "://" in store and not store.startswith("file://")


def as_store(store):
    """A store argument as a string path or URL (zarr store objects pass through)."""
    if isinstance(store, os.PathLike):
        return os.fspath(store)
    return store


def _fs(store):
    from fsspec.core import url_to_fs

    return url_to_fs(store)


def _exists(store):
    if isinstance(store, str):
        if is_url(store):
            fs, path = _fs(store)
            return fs.exists(path)
        return os.path.lexists(store)
    return _read_group(store) is not None


def _entries(store, sub=""):
    """Names directly inside ``store/sub`` (local folder or fsspec URL)."""
    if is_url(store):
        fs, path = _fs(store)
        path = f"{path.rstrip('/')}/{sub}".rstrip("/")
        if not fs.isdir(path):
            return None
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    path = os.path.join(store, sub) if sub else store
    if not os.path.isdir(path):
        return None
    return set(os.listdir(path))


def _join(store, *parts):
    if is_url(store):
        return "/".join([store.rstrip("/"), *parts])
    return os.path.join(store, *parts)


def _move(src, dst):
    if is_url(src):
        fs, a = _fs(src)
        _, b = _fs(dst)
        fs.mv(a, b, recursive=True)
    else:
        os.rename(src, dst)


def _remove(store):
    if is_url(store):
        fs, path = _fs(store)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    elif os.path.isdir(store) and not os.path.islink(store):
        shutil.rmtree(store)
    elif os.path.lexists(store):
        os.unlink(store)


def _inside(path, folder):
    """True when ``path`` is ``folder`` or lies inside it (resolved, local paths)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


# --------------------------------------------------------------------------
# what is at a path


def _read_group(store):
    import zarr

    try:
        return zarr.open_group(store, mode="r", use_consolidated=False)
    except (FileNotFoundError, NotADirectoryError, KeyError, ValueError, TypeError,
            zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None


def read_attrs(store):
    """The attributes of the bigstack store at ``store``, or None if it is not one."""
    group = _read_group(store)
    if group is None:
        return None
    attrs = group.attrs.asdict()
    marked = isinstance(attrs.get(MARKER), dict) and attrs[MARKER].get("kind") == "stack"
    legacy = "pending" in attrs and "bigstack_version" in attrs and BOOK in group
    return attrs if (marked or legacy) and BOOK in group else None


def tiles_done(store):
    import zarr

    return zarr.open_group(store, mode="r", use_consolidated=False)[BOOK]["tiles_done"][:]


def _foreign_entries(store):
    """Entries of a store folder that bigstack did not write (sorted), for the overwrite check."""
    if not isinstance(store, str):
        return []
    top = _entries(store)
    if top is None:
        return []
    foreign = sorted(top - _TOP_LEVEL)
    for name in sorted(top & (_TOP_LEVEL - {"zarr.json", BOOK})):
        inner = _entries(store, name)
        if inner is not None:
            foreign += [f"{name}/{e}" for e in sorted(inner - _ARRAY_ENTRIES)]
    return foreign


def _describe(store, attrs):
    if attrs.get("complete"):
        return "a finished stack"
    done = tiles_done(store)
    return f"an unfinished stack ({int((done == 0).sum())} of {done.size} tiles missing)"


# --------------------------------------------------------------------------
# before any work: may this call write there?


def check_target(store, mode, inputs=()):
    """Refuse, with one line naming the path, a store this call must not write.

    Runs before any frame is read. Returns the existing store's attributes
    (None when there is no store yet).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(store, str) and not is_url(store):
        _check_local_path(store, mode, inputs)
    exists = _exists(store)
    attrs = read_attrs(store) if exists else None
    if mode == "write" and exists:
        if attrs is None:
            raise StoreExistsError(f"{store}: exists and is not a bigstack store; choose another "
                                   "output path")
        if not attrs.get("complete"):
            raise StoreExistsError(
                f"{store}: holds {_describe(store, attrs)}; pass --resume (mode='resume') to "
                "finish it, or --overwrite (mode='overwrite') to start again")
        raise StoreExistsError(f"{store}: holds a finished stack; pass --overwrite "
                               "(mode='overwrite') to replace it, or --append to add frames")
    if mode == "overwrite" and exists:
        if attrs is None:
            raise StoreExistsError(
                f"{store}: exists and is not a bigstack store; overwrite replaces only a store "
                "bigstack made, so choose another output path")
        foreign = _foreign_entries(store)
        if foreign:
            listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise StoreExistsError(f"{store}: holds files bigstack did not write ({listed}); "
                                   "refusing to overwrite it")
    if mode in ("resume", "append"):
        if not exists:
            raise BigstackError(f"{store}: no store to {mode if mode == 'resume' else 'append to'}")
        if attrs is None:
            raise BigstackError(f"{store}: not a bigstack stack store; cannot {mode} it")
        if mode == "resume" and attrs.get("complete"):
            raise BigstackError(f"{store}: the stack is complete; there is nothing to resume")
        if mode == "append" and not attrs.get("complete"):
            pending = attrs.get("pending") or {}
            raise BigstackError(
                f"{store}: an earlier {pending.get('mode', 'run')} into this store did not "
                "finish; finish it first with resume (CLI: --resume)")
    return attrs


def _check_local_path(store, mode, inputs):
    here = os.getcwd()
    if _inside(here, store):
        what = "the current folder" if os.path.realpath(store) == os.path.realpath(here) \
            else "a parent of the current folder"
        raise StoreExistsError(f"{store}: is {what}; choose a new path for the store")
    for frame in inputs:
        if is_url(frame):
            continue
        if _inside(frame, store):
            same = os.path.realpath(frame) == os.path.realpath(store)
            raise StoreExistsError(
                f"{store}: {'is' if same else 'contains'} the input frame {frame}; choose "
                "another output path")
    parent = os.path.dirname(os.path.abspath(store))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{store}: the folder {parent} does not exist")
    if mode in ("write", "overwrite") and not os.access(parent, os.W_OK):
        raise PermissionError(f"{store}: cannot write in {parent} (permission denied or a "
                              "read-only file system)")
    if os.path.lexists(store) and not os.path.isdir(store):
        raise StoreExistsError(f"{store}: is a file, not a store; choose another output path")


# --------------------------------------------------------------------------
# creating, resuming, appending


def now():
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def create(store, attrs, arrays):
    """Create a new store with ``attrs``, replacing a bigstack store there (moved aside).

    ``arrays`` names the (y, x) arrays besides the coordinates. Returns the
    attributes written.
    """
    import zarr

    replaces = []
    old = read_attrs(store) if _exists(store) else None
    if old is not None:
        if old.get("complete"):
            aside = f"{store}.bigstack-old-{uuid.uuid4().hex[:8]}"
            _move(store, aside)
            replaces = [aside]
        else:  # an unfinished stack: keep what it was replacing, drop its partial tiles
            replaces = list((old.get("pending") or {}).get("replaces", []))
            _remove(store)
    attrs = dict(attrs, **{MARKER: {"kind": "stack", "layout": _LAYOUT}})
    attrs["pending"] = dict(attrs["pending"], replaces=replaces)
    grid = attrs["grid"]
    rows, cols = grid["y1"] - grid["y0"], grid["x1"] - grid["x0"]
    tile = attrs["parameters"]["tile_rows"]
    group = zarr.open_group(store, mode="w-", zarr_format=3, attributes=attrs)
    _create_arrays(group, rows, cols, tile, arrays, len(attrs.get("channels") or ()))
    for name, values in (("y", np.arange(grid["y0"], grid["y1"])),
                         ("x", np.arange(grid["x0"], grid["x1"]))):
        array = group.create_array(name, shape=values.shape, dtype="int64",
                                   dimension_names=(name,))
        array[:] = values
    book = group.create_group(BOOK)
    book.create_array("tiles_done", shape=(-(-rows // tile),), chunks=(1,), dtype="uint8",
                      fill_value=0)
    return attrs


# float data are written with a fast byte-shuffled LZ4 (Blosc level 1): sums of
# integer frames shrink about 3x and, with the stack, write about a third faster
# than raw bytes (measured on 2048-wide tiles); counts use zarr's default
_SPECS = {"stack": ("float32", np.nan, "lz4"), "coverage": ("int32", 0, "auto"),
          "sum": ("float64", 0.0, "lz4"), "rejected": ("int32", 0, "auto")}


def _compressors(kind):
    if kind == "lz4":
        from zarr.codecs import BloscCodec

        return BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")
    return kind


def _create_arrays(group, rows, cols, tile, names, channels=0):
    """The (y, x) arrays, or (channel, y, x) for a colour stack (a tile's colours in one
    chunk)."""
    lead = (channels,) if channels else ()
    dims = ("channel", "y", "x") if channels else ("y", "x")
    for name in names:
        dtype, fill, compressors = _SPECS[name]
        group.create_array(name, shape=(*lead, rows, cols), chunks=(*lead, tile, cols),
                           dtype=dtype, fill_value=fill, dimension_names=dims,
                           compressors=_compressors(compressors))


def prepare_resume(store, attrs, operation):
    """Check that this call is the interrupted one; returns the store's attributes."""
    pending = attrs["pending"]
    stored = {k: pending.get(k) for k in operation}
    if stored != operation:
        diff = [k for k in operation if stored[k] != operation[k]]
        raise BigstackError(
            f"{store}: was being written with other {', '.join(diff)} than this call's; "
            "resume with the same frames, shifts and parameters, or start a new store")
    return attrs


def prepare_append(store, attrs, operation, frame_meta):
    """Open a finished store for more frames: save its sums, extend its provenance."""
    import zarr

    stored_parameters = {k: attrs["parameters"].get(k) for k in operation["parameters"]}
    if stored_parameters != operation["parameters"]:
        diff = ", ".join(f"{k}={attrs['parameters'].get(k)!r} (not {v!r})"
                         for k, v in operation["parameters"].items()
                         if stored_parameters[k] != v)
        raise BigstackError(f"{store}: was stacked with {diff}; append with the same settings")
    if operation["frame_shape"] != attrs["frame_shape"]:
        raise BigstackError(f"{store}: holds frames of shape {tuple(attrs['frame_shape'])} "
                            f"(y, x); the new frames are {tuple(operation['frame_shape'])}")
    offset = len(attrs["inputs"])
    n_total = attrs["n_frames"] + len(operation["frames_used"])
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    book = group[BOOK]
    grid = attrs["grid"]
    rows, cols = grid["y1"] - grid["y0"], grid["x1"] - grid["x0"]
    tile = attrs["parameters"]["tile_rows"]
    # keep the sums from before the append, so tile tasks can be rerun safely: the
    # live arrays are moved into the book (a rename, not a copy) and new ones made
    for name in ("sum", "coverage"):
        if name in book:
            del book[name]
    if isinstance(store, str):
        for name in ("sum", "coverage"):
            _move(_join(store, name), _join(store, BOOK, name))
        group = zarr.open_group(store, mode="r+", use_consolidated=False)
        book = group[BOOK]
        _create_arrays(group, rows, cols, tile, ("sum", "coverage"))
    else:  # a zarr store object: copy, tile by tile
        _create_arrays(book, rows, cols, tile, ("sum", "coverage"))
        for a in range(0, rows, tile):
            b = min(a + tile, rows)
            book["sum"][a:b] = group["sum"][a:b]
            book["coverage"][a:b] = group["coverage"][a:b]
    book["tiles_done"][:] = 0
    attrs = dict(attrs)
    for key, values in frame_meta.items():
        attrs[key] = list(attrs.get(key) or [None] * offset) + list(values)
    attrs.pop("frames", None)  # registration tables of two runs do not share a reference
    attrs.update(
        complete=False,
        inputs=attrs["inputs"] + operation["inputs"],
        shifts=attrs["shifts"] + operation["shifts"],
        transforms=_transforms_of(attrs) + operation["transforms"],
        frames_used=attrs["frames_used"] + [offset + i for i in operation["frames_used"]],
        n_frames=n_total,
        pending=dict(operation, n_total=n_total, replaces=[]),
    )
    # all of them, in one write: a merge would keep the keys dropped above (the first
    # run's registration table, which does not describe the appended frames)
    group.attrs.put(attrs)
    return attrs


def _transforms_of(attrs):
    """The stored frames' transforms (stores from before transforms: their shifts)."""
    if "transforms" in attrs:
        return list(attrs["transforms"])
    return [[[1.0, 0.0, dx], [0.0, 1.0, dy]] for dx, dy in attrs["shifts"]]


# --------------------------------------------------------------------------
# the tile task's write, and the end


class Tiles:
    """The store's arrays the tile tasks of one run write, opened once.

    Opening the group and its arrays reads their metadata, the group's with
    every frame's attributes (143 kB at 400 frames): about 8 ms a tile,
    0.6 s of a 74-tile median stack of 400 frames. The tasks share one
    handle; a copy (another process of a cluster) opens them again once.
    """

    def __init__(self, store):
        self.store = store
        self._arrays = {}
        self._group = None
        self._lock = threading.Lock()

    def __reduce__(self):
        return (Tiles, (self.store,))

    def __getitem__(self, path):
        """The array at ``path`` (``"stack"``, ``"_bigstack/sum"``)."""
        import zarr

        with self._lock:
            if path not in self._arrays:
                if self._group is None:
                    self._group = zarr.open_group(self.store, mode="r+", use_consolidated=False)
                array = self._group[path]
                self._arrays[path] = array, _chunk_writer(array)
            return self._arrays[path][0]

    def write(self, path, a, b, values):
        """Write rows ``[a, b)`` of the array at ``path`` (the last axis but one; of a 1-D
        array, its elements), which are one whole chunk of it (a tile): as a chunk file,
        or through zarr (see :func:`_chunk_writer`)."""
        array = self[path]
        writer = self._arrays[path][1]
        if writer is None:
            _zarr_write(array, a, b, values)
        else:
            writer(a, b, values)


def _zarr_write(array, a, b, values):
    """``array``'s rows ``[a, b)`` (the last axis but one; of a 1-D array, its elements)
    written through zarr."""
    array[(slice(None),) * max(array.ndim - 2, 0) + (slice(a, b),)] = values


def _chunk_writer(array):
    """``write(a, b, values)``: rows ``[a, b)`` of ``array``, one whole chunk, encoded as
    zarr encodes it (its bytes codec, then Blosc or Zstd) and written as the chunk's
    file (to a temporary name, then renamed); None for arrays whose codecs or store
    this does not cover, which zarr then writes.

    zarr writes the chunks of every thread on its one event-loop thread:
    measured 20 ms for a 512 x 2048 tile of ``stack``, ``coverage`` and ``sum``
    alone, 35-66 ms with two tiles at once. Encoded here (about 6 ms, and the
    compressors release the GIL), the two threads write in parallel. The bytes
    are zarr's own (tests/test_store.py compares the files).
    """
    import numcodecs
    from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec
    from zarr.storage import LocalStore

    meta = array.metadata
    store = array.store_path.store
    codecs = tuple(getattr(meta, "codecs", ()))
    if not (isinstance(store, LocalStore) and codecs and isinstance(codecs[0], BytesCodec)
            and len(codecs) <= 2 and getattr(meta, "zarr_format", 3) == 3):
        return None
    dtype = np.dtype(array.dtype)
    if dtype.itemsize > 1 and (codecs[0].endian is None or codecs[0].endian.value != "little"):
        return None
    compressor = codecs[1] if len(codecs) == 2 else None
    if isinstance(compressor, BloscCodec):
        encoder = numcodecs.Blosc(cname=compressor.cname.value, clevel=compressor.clevel,
                                  shuffle={"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[
                                      compressor.shuffle.value],
                                  blocksize=compressor.blocksize)
        if compressor.typesize != dtype.itemsize:
            return None
    elif isinstance(compressor, ZstdCodec):
        encoder = numcodecs.Zstd(level=compressor.level, checksum=compressor.checksum)
    elif compressor is None:
        encoder = None
    else:
        return None
    chunks = tuple(array.chunks)
    shape = tuple(array.shape)
    fill = meta.fill_value
    folder = os.path.join(str(store.root), array.path)

    axis = max(len(shape) - 2, 0)  # the rows: a tile's chunk is whole along the others
    index = (slice(None),) * axis
    rows = chunks[axis]
    whole = chunks[:axis] + chunks[axis + 1:] == shape[:axis] + shape[axis + 1:]

    def write(a, b, values):
        values = np.asarray(values, dtype.newbyteorder("<"))
        if not whole or a % rows or b - a > rows \
                or values.shape != (*shape[:axis], b - a, *shape[axis + 1:]):
            _zarr_write(array, a, b, values)  # not one whole chunk
            return
        if b - a < rows:  # an edge chunk is stored whole, the rest is the fill value
            full = np.full((*shape[:axis], rows, *shape[axis + 1:]), fill, values.dtype)
            full[(*index, slice(0, b - a))] = values
            values = full
        data = np.ascontiguousarray(values)
        encoded = data.tobytes() if encoder is None else encoder.encode(data)
        coords = tuple(a // rows if k == axis else 0 for k in range(len(shape)))
        _put(os.path.join(folder, *meta.encode_chunk_key(coords).split("/")), encoded)

    return write


def _put(path, data):
    """Write ``data`` as the file ``path`` whole or not at all (a temporary file renamed);
    an OSError names ``path``."""
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.partial"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise OSError(err.errno, err.strerror, path) from err


def write_tile(tiles, arrays, tile, a, b, base, finish_stack):
    """Write tile ``tile`` (rows ``[a, b)``) of every array, then mark it done.

    ``tiles`` is the run's :class:`Tiles`. With ``base`` (an append) the
    tile's sums are added to the store's saved copy of the sums before the
    append, never to the live ones, so a rerun of the task writes the same
    values; ``finish_stack(sum, coverage)`` turns them into the stacked
    values.
    """
    if base:
        arrays["sum"] += tiles[f"{BOOK}/sum"][a:b]
        arrays["coverage"] += tiles[f"{BOOK}/coverage"][a:b]
        arrays["stack"] = finish_stack(arrays["sum"], arrays["coverage"])
    for name, values in arrays.items():
        tiles.write(name, a, b, values)  # a colour stack's (channel, rows, x) too
    tiles.write(f"{BOOK}/tiles_done", tile, tile + 1, np.ones(1, np.uint8))
    return b - a


def finish(store):
    """Mark the store complete, consolidate its metadata, delete the store it replaced."""
    import zarr

    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    attrs = group.attrs.asdict()
    pending = attrs["pending"]
    history = attrs.get("history", []) + [
        {"mode": pending["mode"], "frames": len(pending["frames_used"]), "finished": now()}]
    book = group[BOOK]
    for name in ("sum", "coverage"):
        if name in book:
            del book[name]
    # one write of the group's metadata, which holds every frame's attributes (143 kB at
    # 400 frames; attrs.update wrote it once per key: 0.12 s)
    group.update_attributes({"complete": True, "pending": None, "history": history})
    with warnings.catch_warnings():
        # zarr notes that consolidated metadata is an extension to format 3;
        # xarray reads it, and without it open_zarr warns instead
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(store)
    for old in pending.get("replaces", []):
        if read_attrs(old) is not None:  # only ever a store bigstack moved aside
            _remove(old)


# --------------------------------------------------------------------------
# reading


def open_stack(store, *, allow_incomplete=False):
    """Open a stack store written by :func:`bigstack.stack`, lazily.

    Parameters
    ----------
    store : str, path or zarr store
        The store (a folder, or an fsspec URL).
    allow_incomplete : bool
        Open a store whose stack was not finished (a killed or interrupted
        run): the missing tiles are NaN and a :class:`BigstackWarning` says
        how many. By default that is an :class:`IncompleteStoreError`.

    Returns
    -------
    xarray.Dataset
        ``stack``, ``coverage`` and the rest, dims ``(y, x)``, with the
        provenance in ``attrs`` (plus ``store``, and for an unfinished stack
        ``complete=False``, ``tiles_missing`` and ``tiles_total``).

    Raises
    ------
    FileNotFoundError
        Nothing at ``store``.
    BigstackError
        ``store`` is not a bigstack stack store.
    IncompleteStoreError
        The stack is unfinished and ``allow_incomplete`` is false.
    """
    import xarray as xr

    store = as_store(store)
    if isinstance(store, str) and not _exists(store):
        raise FileNotFoundError(f"{store}: no such store")
    attrs = read_attrs(store)
    if attrs is None:
        raise BigstackError(f"{store}: not a bigstack stack store")
    complete = bool(attrs.get("complete"))
    extra = {"store": str(store)}
    if not complete:
        done = tiles_done(store)
        missing, total = int((done == 0).sum()), int(done.size)
        if not allow_incomplete:
            raise IncompleteStoreError(store, missing, total)
        warnings.warn(f"{store}: incomplete stack ({missing} of {total} tiles missing): the "
                      "missing rows are NaN", BigstackWarning, stacklevel=2)
        extra.update(tiles_missing=missing, tiles_total=total)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="xarray")
        ds = xr.open_zarr(store, consolidated=complete)
    drop = [name for name in ds.data_vars if name.startswith(BOOK)]
    ds = ds.drop_vars(drop)
    if attrs.get("channels") and "channel" in ds.dims:
        ds = ds.assign_coords(channel=list(attrs["channels"]))
    ds.attrs.update(extra)
    return ds


@contextlib.contextmanager
def quiet_zarr():
    """Silence the format-3 notices zarr prints for stores bigstack writes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        yield
