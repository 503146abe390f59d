"""Writing output files safely, and recognising the files bigstack wrote.

Every file output goes through :func:`atomic_output`: written under a
temporary name beside the target, flushed, then published in one step, so
a failure never leaves a half file under the final name. An existing file
is replaced only when asked and only when bigstack wrote it
(:func:`made_by_bigstack`): an output never replaces anything bigstack did
not create.

Markers bigstack writes
-----------------------
PNG
    a ``tEXt`` chunk ``Software: bigstack``;
JPEG
    a comment segment (``COM``) ``bigstack``;
FITS
    ``CREATOR`` (outputs) or ``SWCREATE`` (synthetic frames) starting with
    ``bigstack``;
TIFF / DNG
    the ``Software`` tag (305) ``bigstack``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import uuid
import zlib

SOFTWARE = "bigstack"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_text_chunk(key, value):
    """A PNG ``tEXt`` chunk (length, type, data, CRC)."""
    data = key.encode("latin-1") + b"\x00" + value.encode("latin-1")
    return (struct.pack(">I", len(data)) + b"tEXt" + data
            + struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF))


def mark_png(encoded):
    """PNG bytes with a ``Software: bigstack`` text chunk after the header chunk."""
    end_of_header = len(_PNG_SIGNATURE) + 25  # IHDR: 4 length + 4 type + 13 data + 4 CRC
    return bytes(encoded[:end_of_header]) + _png_text_chunk("Software", SOFTWARE) + \
        bytes(encoded[end_of_header:])


def mark_jpeg(encoded):
    """JPEG bytes with a comment segment saying bigstack after the start-of-image marker."""
    text = SOFTWARE.encode("ascii")
    return bytes(encoded[:2]) + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + \
        bytes(encoded[2:])


def _png_marked(f):
    while True:
        length_type = f.read(8)
        if len(length_type) < 8:
            return False
        length, kind = struct.unpack(">I4s", length_type)
        if kind in (b"IDAT", b"IEND") or length > 1 << 20:
            return False
        data = f.read(length)
        f.seek(4, os.SEEK_CUR)
        if kind == b"tEXt" and data.partition(b"\x00")[::2] == (b"Software",
                                                                SOFTWARE.encode()):
            return True


def _jpeg_marked(f):
    while True:
        marker = f.read(4)
        if len(marker) < 4 or marker[0] != 0xFF or marker[1] in (0xDA, 0xD9):
            return False
        (length,) = struct.unpack(">H", marker[2:])
        data = f.read(length - 2)
        if marker[1] == 0xFE and data == SOFTWARE.encode():
            return True


def _fits_marked(f):
    f.seek(0)
    block = f.read(2880 * 4).decode("ascii", errors="replace")
    for start in range(0, len(block), 80):
        card = block[start:start + 80]
        if card.startswith(("CREATOR =", "SWCREATE=")):
            if card[10:].strip().strip("'").startswith(SOFTWARE):
                return True
        if card.startswith("END     "):
            return False
    return False


def _tiff_marked(path):
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            tag = tif.pages[0].tags.get(305)
            return tag is not None and str(tag.value).startswith(SOFTWARE)
    except Exception:  # noqa: BLE001 - any unreadable file is simply not ours
        return False


def made_by_bigstack(path):
    """True when ``path`` is a PNG, JPEG, FITS, TIFF or DNG file bigstack wrote."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head == _PNG_SIGNATURE:
                return _png_marked(f)
            if head[:2] == b"\xff\xd8":
                f.seek(2)
                return _jpeg_marked(f)
            if head.startswith(b"SIMPLE"):
                return _fits_marked(f)
            if head[:4] in (b"II*\x00", b"MM\x00*"):
                return _tiff_marked(path)
    except OSError:
        return False
    return False


def refuse_existing(path, overwrite, made=made_by_bigstack):
    """Refuse to replace ``path`` unless ``overwrite`` and bigstack wrote it (``made``)."""
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(f"{path}: exists already; pass overwrite=True to replace it")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a folder; refusing to replace it with a file")
    if not made(path):
        raise FileExistsError(f"{path}: exists and is not a file bigstack wrote; refusing to "
                              "replace it (choose another path)")


@contextlib.contextmanager
def atomic_output(path, overwrite, made=made_by_bigstack):
    """Yield a temporary file name next to ``path``; publish it as ``path`` on success.

    The temporary file is written, flushed to disk and then linked (no
    overwrite) or renamed (overwrite) to ``path``, so a failure at any
    point leaves ``path`` as it was. The temporary file is always removed.
    An existing ``path`` is replaced only with ``overwrite`` and when
    ``made(path)`` says bigstack wrote it.
    """
    refuse_existing(path, overwrite, made)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: the folder {folder} does not exist")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile: never clobbers
            except FileExistsError:
                refuse_existing(path, overwrite, made)
                raise
            except OSError:  # file system without hard links
                refuse_existing(path, overwrite, made)
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
