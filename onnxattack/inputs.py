"""Input sets streamed in batches: .npy (memory-mapped), .npz (read row by row from the zip),
.h5/.hdf5 (sliced), or a folder of PNG/JPEG images. Memory stays flat however many inputs."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import BadInputError

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
            yield first, np.asarray(self.array[first:min(first + batch_size, stop)])


class NpzMemberSource:
    """One array of a .npz, read sequentially from its zip member (compressed or not)."""

    def __init__(self, path: Path, member: str) -> None:
        self.path, self.member = path, member
        with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
            shape, fortran, dtype = self._header(stream)
        if fortran and len(shape) > 1:
            raise BadInputError(f"{path}:{member} is stored in Fortran order; save it in C order")
        if dtype.hasobject:
            raise BadInputError(f"{path}:{member} holds Python objects, not numbers")
        self.count, self.sample_shape, self.dtype = int(shape[0]), tuple(shape[1:]), dtype

    @staticmethod
    def _header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
        version = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(stream)
        return shape, fortran, dtype

    def batches(self, start: int, stop: int, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        row_bytes = int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize
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


def open_inputs(path: str | os.PathLike, key: str | None = None, image_layout: str = "chw",
                image_scale: float = 1 / 255, image_channels: int | None = None) -> InputSource:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"inputs not found: {path}")
    if path.is_dir():
        return ImageFolderSource(path, image_layout, image_scale, image_channels)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise BadInputError(f"{path} is not a readable .npy file: {exc}") from None
        source: InputSource = ArraySource(array)
    elif suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as archive:
                members = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        except zipfile.BadZipFile:
            raise BadInputError(f"{path} is not a readable .npz file") from None
        source = NpzMemberSource(path, _pick_key(members, key, path) + ".npy")
    elif suffix in (".h5", ".hdf5"):
        import h5py

        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise BadInputError(f"{path} is not a readable HDF5 file: {exc}") from None
        names: list[str] = []
        handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        source = ArraySource(handle[_pick_key(names, key, path)], handle)
    else:
        raise BadInputError(f"unsupported inputs {path}: expected .npy, .npz, .h5/.hdf5 or a folder of images")
    if len(source.sample_shape) + 1 < 2 or source.count == 0:
        raise BadInputError(f"{path} holds no batch of inputs (shape {[source.count, *source.sample_shape]})")
    return source


def open_passthrough(path: str | os.PathLike, names: list[str], attacked: str) -> dict[str, InputSource]:
    """A multi-input model's other inputs: one array per input name from the same .npz / .h5 file."""
    if not names:
        return {}
    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in (".npz", ".h5", ".hdf5"):
        raise BadInputError(f"the model has inputs {', '.join([attacked, *names])}: give a .npz or .h5 file holding "
                            f"one array per input name (the attacked one, {attacked}, with --key if named otherwise)")
    return {name: open_inputs(path, name) for name in names}


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
