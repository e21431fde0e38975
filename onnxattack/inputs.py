"""Input sets streamed in batches: .npy (memory-mapped), .npz (read row by row from the zip),
.h5/.hdf5 (sliced), or a folder of PNG/JPEG images. Memory stays flat however many inputs."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import BadInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class InputSource(Protocol):
    count: int
    sample_shape: tuple[int, ...]
    dtype: np.dtype

    def batches(self, start: int, stop: int, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(index of the first row, rows) for rows start..stop-1, in order."""


@dataclass
class ArraySource:
    """A .npy memory map or an HDF5 dataset: both slice without loading the rest."""

    array: object  # np.memmap or h5py.Dataset
    handle: object | None = None  # kept open while the source lives

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
                names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        except zipfile.BadZipFile:
            raise BadInputError(f"{path} is not a readable .npz file") from None
        source = NpzMemberSource(path, _pick_key(names, key, path) + ".npy")
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
