"""Input sets streamed in batches: .npy (memory-mapped), .npz (read row by row from the zip),
.h5/.hdf5 (sliced), or a folder of PNG/JPEG images. Memory stays flat however many inputs."""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import BadInputError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class InputSource(Protocol):
    @property
    def count(self) -> int: ...

    @property
    def sample_shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def batches(self, start: int, stop: int, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(index of the first row, rows) for rows start..stop-1, in order."""


@dataclass
class ArraySource:
    """A .npy memory map or an HDF5 dataset: both slice without loading the rest."""

    array: Any  # np.memmap or h5py.Dataset
    handle: Any = None  # kept open while the source lives
    where: str = "inputs"  # the file (and dataset) errors name

    @property
    def count(self) -> int:
        return int(self.array.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def batches(self, start: int, stop: int, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        for first in range(start, stop, batch_size):
            last = min(first + batch_size, stop)
            try:
                rows = np.asarray(self.array[first:last])
            except Exception as exc:  # a damaged HDF5 chunk or a failing filter: OSError, ValueError, ...
                raise BadInputError(f"{self.where}: cannot read rows {first}..{last - 1}: {first_line(exc)}") from None
            yield first, rows


class NpzMemberSource:
    """One array of a .npz, read sequentially from its zip member (compressed or not)."""

    def __init__(self, path: Path, member: str) -> None:
        self.path, self.member = path, member
        where = f"{path}:{member}"
        try:
            with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
                shape, fortran, dtype = self._header(stream)
                header_bytes = stream.tell()
                stored = archive.getinfo(member).file_size
        except Exception as exc:  # numpy's header parser and zipfile raise ValueError, EOFError, SyntaxError, ...
            raise BadInputError(f"{where} is not a readable .npy member: {first_line(exc)}") from None
        if dtype.hasobject:
            raise BadInputError(f"{where} holds Python objects, not numbers")
        check_numeric(dtype, where)
        if not shape:
            raise BadInputError(f"{where} holds a single value (a 0-d array), not a batch of inputs")
        if fortran and len(shape) > 1:
            raise BadInputError(f"{where} is stored in Fortran order; save it in C order")
        claimed = header_bytes + math.prod(shape) * dtype.itemsize
        if stored != claimed:
            raise BadInputError(f"{where} is truncated or padded: its header claims shape {list(shape)} of {dtype} "
                                f"({claimed} bytes with the header), the member holds {stored}")
        self.count, self.sample_shape, self.dtype = int(shape[0]), tuple(shape[1:]), dtype

    @staticmethod
    def _header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown .npy format version {version}")
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(stream)
        return shape, fortran, dtype

    def batches(self, start: int, stop: int, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        try:
            yield from self._batches(start, stop, batch_size)
        except BadInputError:
            raise
        except Exception as exc:  # a member whose compressed data or CRC is damaged: zlib.error, BadZipFile, ...
            raise BadInputError(f"{self.path}:{self.member} cannot be read: {first_line(exc)}") from None

    def _batches(self, start: int, stop: int, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        row_bytes = math.prod(self.sample_shape) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as stream:
            self._header(stream)
            skipped = 0
            while skipped < start:  # resume: read past the rows already done
                chunk = min(start - skipped, max(1, (64 << 20) // max(row_bytes, 1)))
                stream.read(chunk * row_bytes)
                skipped += chunk
            for first in range(start, stop, batch_size):
                rows = min(batch_size, stop - first)
                buffer = stream.read(rows * row_bytes)
                if len(buffer) != rows * row_bytes:
                    raise BadInputError(f"{self.path}:{self.member} is truncated")
                yield first, np.frombuffer(buffer, dtype=self.dtype).reshape(rows, *self.sample_shape)


class ImageFolderSource:
    """PNG/JPEG files in name order, as arrays in the layout and scale the user states."""

    def __init__(self, folder: Path, layout: str, scale: float, channels: int | None,
                 dtype: np.dtype = np.dtype(np.float32)) -> None:
        from PIL import Image

        self._image = Image
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise BadInputError(f"no PNG or JPEG images in folder {folder}")
        if layout not in ("chw", "hwc"):
            raise BadInputError(f"unknown image layout {layout!r} (expected chw or hwc)")
        self.layout, self.scale, self.channels, self.dtype = layout, scale, channels, np.dtype(dtype)
        first = self._read(self.files[0])
        self.count, self.sample_shape = len(self.files), first.shape

    def _read(self, path: Path) -> np.ndarray:
        try:
            with self._image.open(path) as image:
                mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(self.channels or 0, image.mode)
                pixels = np.asarray(image.convert(mode), dtype=np.float64)
        except OSError as exc:
            raise BadInputError(f"cannot read image {path}: {exc}") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.layout == "chw":
            pixels = pixels.transpose(2, 0, 1)
        return (pixels * self.scale).astype(self.dtype)

    def batches(self, start: int, stop: int, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        for first in range(start, stop, batch_size):
            rows = [self._read(p) for p in self.files[first:min(first + batch_size, stop)]]
            shapes = {r.shape for r in rows}
            if len(shapes) > 1 or rows[0].shape != self.sample_shape:
                raise BadInputError(f"images in the folder differ in size; expected {self.sample_shape}")
            yield first, np.stack(rows)


def check_numeric(dtype: np.dtype, where: str) -> None:
    """Attacks need real numbers: refuse strings, objects, complex values, dates."""
    if np.dtype(dtype).kind not in "biuf":
        kinds = {"U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers", "V": "records",
                 "M": "dates", "m": "time spans"}
        what = kinds.get(np.dtype(dtype).kind, str(dtype))
        raise BadInputError(f"{where} holds {what} ({dtype}), not real numbers")


def _first_bad_row(x: np.ndarray, box: tuple[float, float]) -> tuple[int, str] | None:
    """(row, "nan" | "box") of the first row that is not finite or leaves the box; None if all are fine."""
    flat = np.asarray(x).reshape(len(x), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        return int(np.flatnonzero(~finite)[0]), "nan"
    outside = (flat.min(axis=1) < box[0]) | (flat.max(axis=1) > box[1])
    if outside.any():
        return int(np.flatnonzero(outside)[0]), "box"
    return None


def _bad_row_error(where: str, row: int, kind: str, box: tuple[float, float],
                   span: tuple[float, float]) -> BadInputError:
    if kind == "nan":
        return BadInputError(f"{where} row {row}: NaN or infinite values (onnxattack attacks finite inputs only)")
    return BadInputError(f"{where} row {row}: values outside the box --range {box[0]:g} {box[1]:g} (inputs span "
                         f"[{span[0]:g}, {span[1]:g}]); pass --range LO HI with the inputs' valid box")


def check_rows(x: np.ndarray, box: tuple[float, float], where: str, first_row: int = 0) -> None:
    """Every row real, finite and inside the box; the error names the first bad row and the values seen."""
    check_numeric(x.dtype, where)
    if x.size == 0:
        return
    bad = _first_bad_row(x, box)
    if bad is not None:
        flat = np.asarray(x, dtype=np.float64)
        span = (float(np.nanmin(flat)), float(np.nanmax(flat))) if bad[1] == "box" else (0.0, 0.0)
        raise _bad_row_error(where, first_row + bad[0], bad[1], box, span)


def scan_inputs(source: InputSource, count: int, box: tuple[float, float], where: str,
                batch_size: int = 4096) -> None:
    """check_rows over the first `count` rows, streamed, before any slow work. A NaN stops the scan at
    once; a range error states the span of the whole input set, so one rerun with the right --range does."""
    check_numeric(source.dtype, where)
    first_outside: int | None = None
    low, high = np.inf, -np.inf
    for first, rows in source.batches(0, count, batch_size):
        bad = _first_bad_row(rows, box)
        if bad is not None and bad[1] == "nan":
            raise _bad_row_error(where, first + bad[0], "nan", box, (0.0, 0.0))
        if bad is not None and first_outside is None:
            first_outside = first + bad[0]
        low, high = min(low, float(np.min(rows))), max(high, float(np.max(rows)))
    if first_outside is not None:
        raise _bad_row_error(where, first_outside, "box", box, (low, high))


def _pick_key(names: list[str], key: str | None, path: Path) -> str:
    if key is not None:
        if key not in names:
            raise BadInputError(f"{path} has no array {key!r} (arrays: {', '.join(names)})")
        return key
    if len(names) != 1:
        raise BadInputError(f"{path} holds several arrays ({', '.join(names)}); choose one with --key")
    return names[0]


# HDF5 filters built into libhdf5 or shipped with h5py (deflate, shuffle, fletcher32, szip, n-bit,
# scale-offset, LZF). Any other makes HDF5 search its plugin path for a shared library to load.
_BUILTIN_FILTERS = {1, 2, 3, 4, 5, 6, 32000}


def _hdf5_link_problem(handle: Any, name: str) -> str | None:
    """Why the path `name` cannot be followed as plain data in this file: a soft or external link on the
    way (an external one would open another file; a soft one names data under another name)."""
    import h5py

    parts = [part for part in name.split("/") if part]
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        link = handle.get(prefix, getlink=True)
        if link is None:
            return None  # missing: _pick_key names the datasets there are
        if isinstance(link, h5py.ExternalLink):
            return f"{prefix} is an external link to {link.filename}:{link.path}; onnxattack reads no other file"
        if isinstance(link, h5py.SoftLink):
            return f"{prefix} is a soft link to {link.path}; name the dataset itself with --key"
    return None


def _hdf5_dataset_problem(dataset: Any) -> str | None:
    """Why a dataset is not plain numbers stored in this file, before any row of it is read."""
    import h5py

    dtype = dataset.dtype
    if dataset.external:
        files = ", ".join(str(entry[0]) for entry in dataset.external)
        return f"keeps its values in other files ({files}) as external raw storage; onnxattack reads no other file"
    if dataset.is_virtual:
        return "is a virtual dataset mapped onto other datasets or files; onnxattack reads no other file"
    if h5py.check_string_dtype(dtype) is not None:
        return "holds strings, not real numbers"
    if h5py.check_vlen_dtype(dtype) is not None:
        return "holds variable-length sequences, not real numbers"
    if h5py.check_ref_dtype(dtype) is not None:
        return "holds object references, not real numbers"
    if dtype.subdtype is not None:
        return f"holds a fixed-size array {dtype.subdtype[1]} per element ({dtype}); store it as extra dims"
    if dataset.shape is None:
        return "has an empty dataspace: it holds no values"
    if dataset.shape == ():
        return "holds a single value (a scalar dataset), not a batch of inputs"
    plist = dataset.id.get_create_plist()
    unknown = sorted({plist.get_filter(i)[0] for i in range(plist.get_nfilters())} - _BUILTIN_FILTERS)
    if unknown:
        return f"needs HDF5 filter plugin(s) {unknown}, which onnxattack does not load"
    return None


def _hdf5_chunk_problem(dataset: Any, file_size: int) -> str | None:
    """Why a chunked dataset's chunk index cannot be trusted: libhdf5 reads a damaged one without checking
    (a chunk of size 0 or past the end of the file segfaulted it in the fuzz), so every entry is checked
    first: a distinct, aligned place inside the shape, and non-empty bytes inside the file."""
    if dataset.chunks is None:
        return None
    entries: list[Any] = []
    if hasattr(dataset.id, "chunk_iter"):  # one pass; get_chunk_info(i) walks the index again for every i
        dataset.id.chunk_iter(entries.append)
    else:
        entries = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
    grid = math.prod(-(-extent // chunk) for extent, chunk in zip(dataset.shape, dataset.chunks, strict=True))
    if len(entries) > grid:
        return f"lists {len(entries)} chunks where its shape holds {grid}: a damaged chunk index"
    seen: set[tuple[int, ...]] = set()
    for entry in entries:
        place = tuple(int(value) for value in entry.chunk_offset)
        aligned = len(place) == len(dataset.chunks) and all(
            0 <= at < extent and at % chunk == 0
            for at, extent, chunk in zip(place, dataset.shape, dataset.chunks, strict=True))
        if not aligned or place in seen:
            return f"has a chunk at {list(place)} outside its shape or listed twice: a damaged chunk index"
        if entry.size <= 0 or entry.byte_offset + entry.size > file_size:
            return f"has a chunk of {entry.size} bytes at byte {entry.byte_offset} of a {file_size}-byte file"
        seen.add(place)
    return None


def _hdf5_names(handle: Any) -> list[str]:
    """Every dataset reached by hard links, and every soft or external link (named so a refusal can say why)."""
    import h5py

    names: list[str] = []

    def visit(name: str, link: Any) -> None:
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)) or isinstance(handle.get(name), h5py.Dataset):
            names.append(name)

    handle.visititems_links(visit)  # visits links without following soft or external ones
    return names


def checked_hdf5_dataset(handle: Any, name: str, where: str) -> Any:
    """The dataset `name` of an open HDF5 file, if it is plain data: reached without soft or external
    links, its values stored in this file (no external raw storage, not virtual, no filter plugin, a
    sound chunk index), of real numbers with at least one dim. Else BadInputError naming the reason,
    before a value is read. For every HDF5 file a user hands over (inputs, and result files too)."""
    import h5py

    try:
        problem = _hdf5_link_problem(handle, name)
        if problem is not None:
            raise BadInputError(f"{where}: {problem}")
        dataset = handle.get(name)
        if not isinstance(dataset, h5py.Dataset):
            raise BadInputError(f"{where}:{name} is not a dataset")
        problem = _hdf5_dataset_problem(dataset) or _hdf5_chunk_problem(dataset, handle.id.get_filesize())
        if problem is not None:
            raise BadInputError(f"{where}:{name} {problem}")
        check_numeric(dataset.dtype, f"{where}:{name}")
        return dataset
    except BadInputError:
        raise
    except Exception as exc:  # damaged object headers: h5py raises OSError, KeyError, RuntimeError, ...
        raise BadInputError(f"{where} is a damaged HDF5 file: {first_line(exc)}") from None


def _open_hdf5(path: Path, key: str | None) -> ArraySource:
    """A dataset of plain numbers stored in this file (checked_hdf5_dataset), before a row is read."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except Exception as exc:  # OSError mostly; damaged superblocks raise others
        raise BadInputError(f"{path} is not a readable HDF5 file: {first_line(exc)}") from None
    try:
        try:
            names = _hdf5_names(handle)
        except Exception as exc:  # a damaged group: "Object visitation failed (...)"
            raise BadInputError(f"{path} is a damaged HDF5 file: {first_line(exc)}") from None
        dataset = checked_hdf5_dataset(handle, _pick_key(names, key, path), str(path))
    except BadInputError:
        handle.close()
        raise
    return ArraySource(dataset, handle, where=f"{path}:{dataset.name.lstrip('/')}")


def _open_npy(path: Path) -> ArraySource:
    """A .npy memory map: numpy parses the header as a literal (never code) and refuses pickles."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # ValueError, OSError, EOFError, SyntaxError from the header's parser, ...
        raise BadInputError(f"{path} is not a readable .npy file: {first_line(exc)}") from None
    if not isinstance(array, np.ndarray):
        raise BadInputError(f"{path} is not a .npy file (numpy read it as {type(array).__name__})")
    check_numeric(array.dtype, str(path))
    if array.ndim == 0:
        raise BadInputError(f"{path} holds a single value (a 0-d array), not a batch of inputs")
    return ArraySource(array, where=str(path))


def _open_npz(path: Path, key: str | None) -> NpzMemberSource:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    except Exception as exc:  # BadZipFile, and OSError / ValueError / EOFError from a damaged directory
        raise BadInputError(f"{path} is not a readable .npz file: {first_line(exc)}") from None
    return NpzMemberSource(path, _pick_key(members, key, path) + ".npy")


def open_inputs(path: str | os.PathLike, key: str | None = None, image_layout: str = "chw",
                image_scale: float = 1 / 255, image_channels: int | None = None) -> InputSource:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"inputs not found: {path}")
    if path.is_dir():
        return ImageFolderSource(path, image_layout, image_scale, image_channels)
    if not path.is_file():
        raise BadInputError(f"inputs {path} are not a regular file or a folder (a device, FIFO or socket)")
    suffix = path.suffix.lower()
    source: InputSource
    if suffix == ".npy":
        source = _open_npy(path)
    elif suffix == ".npz":
        source = _open_npz(path, key)
    elif suffix in (".h5", ".hdf5"):
        source = _open_hdf5(path, key)
    else:
        raise BadInputError(f"unsupported inputs {path}: expected .npy, .npz, .h5/.hdf5 or a folder of images")
    if len(source.sample_shape) + 1 < 2 or source.count == 0 or 0 in source.sample_shape:
        raise BadInputError(f"{path} holds no batch of inputs (shape {[source.count, *source.sample_shape]})")
    return source


def open_passthrough(path: str | os.PathLike, names: list[str], attacked: str,
                     axes: dict[str, int] | None = None) -> dict[str, InputSource]:
    """A multi-input model's other inputs: one array per input name from the same .npz / .h5 file. An
    input whose batch is in dim `axes[name]` is read whole and served batch-first."""
    if not names:
        return {}
    path = Path(path)
    _check_keyed_file(path, [attacked, *names], attacked)
    axes = axes or {}
    return {name: ArraySource(np.moveaxis(_whole_with_dim(path, name, axes[name]), axes[name], 0),
                              where=f"{path}:{name}")
            if axes.get(name) else open_inputs(path, name) for name in names}


def _check_keyed_file(path: Path, names: list[str], attacked: str) -> None:
    if path.is_dir() or path.suffix.lower() not in (".npz", ".h5", ".hdf5"):
        raise BadInputError(f"the model has inputs {', '.join(names)}: give a .npz or .h5 file holding "
                            f"one array per input name (the attacked one, {attacked}, with --key if named otherwise)")


def _whole_with_dim(path: Path, name: str, axis: int) -> np.ndarray:
    array = read_whole(path, name)
    if array.ndim <= axis:
        raise BadInputError(f"{path}:{name} has shape {list(array.shape)}: no dim {axis} to hold the batch")
    return array


def read_whole(path: str | os.PathLike, name: str) -> np.ndarray:
    """One array of a .npz / .h5 inputs file, read whole: an input given once (--broadcast), or one whose
    batch is not its first dim. Plain numbers only; a pickle is refused, never loaded."""
    path = Path(path)
    _check_keyed_file(path, [name], "the attacked input")
    where = f"{path}:{name}"
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                if name not in archive.files:
                    raise BadInputError(f"{path} has no array {name!r} (arrays: {', '.join(archive.files)})")
                array = np.asarray(archive[name])
        except BadInputError:
            raise
        except Exception as exc:  # BadZipFile, ValueError (pickles), OSError, ...
            raise BadInputError(f"cannot read {where}: {first_line(exc)}") from None
    else:
        array = _read_hdf5_whole(path, name)
    check_numeric(array.dtype, where)
    return array


def _read_hdf5_whole(path: Path, name: str) -> np.ndarray:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except Exception as exc:  # OSError mostly
        raise BadInputError(f"{path} is not a readable HDF5 file: {first_line(exc)}") from None
    with handle:
        try:
            return np.asarray(checked_hdf5_dataset(handle, name, str(path))[()])
        except BadInputError:
            raise
        except Exception as exc:  # damaged chunks, failing filters
            raise BadInputError(f"cannot read {path}:{name}: {first_line(exc)}") from None


def check_passthrough_sources(sources: dict[str, InputSource], total: int, count: int, where: str) -> None:
    """Each pass-through input has exactly a row per input (`total`: the attacked array's rows; a
    different count means the arrays are not aligned), and real, finite values in the `count` rows
    attacked (no box applies: they are not perturbed)."""
    for name, source in sources.items():
        label = f"{where}:{name}"
        if source.count != total:
            raise BadInputError(f"{label} has {source.count} rows, the attacked input {total}: "
                                f"every input needs one row per sample")
        check_numeric(source.dtype, label)
        for first, rows in source.batches(0, count, 4096):
            bad = _first_bad_row(rows, (-np.inf, np.inf))
            if bad is not None:
                raise _bad_row_error(label, first + bad[0], "nan", (0.0, 0.0), (0.0, 0.0))
