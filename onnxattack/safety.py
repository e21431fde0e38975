"""Output files checked before any work, and written so that nothing a user had is lost.

Every command that writes a file asks `check_output` first (before loading a model or reading a row)
and writes through `atomic_write`:

    out = check_output(args.out, inputs=[model_path, inputs_path], overwrite=args.overwrite)
    with atomic_write(out) as temp:
        write_the_result(temp)          # an interrupted or failed write leaves the old file whole

What is refused (BadInputError, exit code 2, one line): an output that is one of the command's inputs
(the same path, the same file after symlinks, or the same inode through a hard link), a device, a FIFO,
a socket, a folder, a symlink (unless `allow_link_replace`: then the link itself is replaced, never the
file it points to), an existing file without `overwrite`, and a folder that is missing or not writable.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import BadInputError

PathLike = str | os.PathLike[str]

_SPECIAL_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISDIR, "a folder"))


def resolve(path: PathLike) -> Path:
    """The absolute path with every symlink followed (the path itself need not exist)."""
    return Path(os.path.expanduser(os.fspath(path))).resolve(strict=False)


def _absolute(path: PathLike) -> Path:
    """The absolute path without following symlinks: the name a rename replaces."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _same_file(out: Path, source: Path) -> bool:
    if out == _absolute(source) or resolve(out) == resolve(source):
        return True
    try:
        return os.path.samefile(out, source)  # hard links: two names, one inode
    except OSError:  # either one missing: they cannot be the same file
        return False


def _refuse_inputs(out: Path, inputs: Iterable[PathLike], what: str) -> None:
    for source in inputs:
        if _same_file(out, Path(os.fspath(source))):
            raise BadInputError(f"the {what} {out} is also an input of this command ({source}); "
                                f"writing it would destroy that input: choose another output path")


def _refuse_special(out: Path, mode: int, what: str) -> None:
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            raise BadInputError(f"the {what} {out} is {kind}, not a regular file: choose a file path")


def _check_folder(out: Path, what: str) -> None:
    """The folder exists, is a folder, and a file can really be created in it (root ignores permission
    bits, a read-only mount does not: only a try tells)."""
    folder = out.parent
    if not folder.exists():
        raise BadInputError(f"cannot write the {what} {out}: its folder {folder} does not exist")
    if not folder.is_dir():
        raise BadInputError(f"cannot write the {what} {out}: {folder} is not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise BadInputError(f"cannot write the {what} {out}: its folder {folder} is not writable "
                            f"({exc.strerror or exc})") from None
    os.close(handle)
    os.unlink(probe)


def make_folder(out: PathLike, what: str = "output") -> None:
    """Create the missing folders of an output path, refusing where a file stands in the way."""
    path = _absolute(out)
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise BadInputError(f"cannot write the {what} {path}: {parent} is a file, not a folder")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot write the {what} {path}: cannot create its folder "
                            f"({exc.strerror or exc})") from None


def check_output(out: PathLike, inputs: Iterable[PathLike] = (), *, overwrite: bool = False,
                 allow_link_replace: bool = False, what: str = "result file", create_folder: bool = False) -> Path:
    """Refuse an output path that would destroy something (see the module docstring); return the
    absolute path to hand to `atomic_write` (a symlink's own path when `allow_link_replace`).
    create_folder: make a missing folder (after every other check) instead of refusing it."""
    path = _absolute(out)
    _refuse_inputs(path, inputs, what)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:  # a parent that is a file (ENOTDIR), a path too long, ...
        blocker = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
        if blocker is not None:
            raise BadInputError(f"cannot write the {what} {path}: {blocker} is a file, not a folder") from None
        raise BadInputError(f"cannot write the {what} {path}: {exc.strerror or exc}") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode) and not allow_link_replace:
            raise BadInputError(f"the {what} {path} is a symbolic link (to {os.readlink(path)}); refusing to "
                                f"write through it: remove the link or choose another path")
        if not stat.S_ISLNK(info.st_mode):
            _refuse_special(path, info.st_mode, what)
        if not overwrite:
            raise BadInputError(f"the {what} {path} already exists; pass --overwrite to replace it")
    if create_folder:
        make_folder(path, what)
    _check_folder(path, what)
    return path


def check_plain_output(path: PathLike, suffixes: Iterable[str], inputs: Iterable[PathLike] = (), *,
                       overwrite: bool = False, allow_link_replace: bool = False, what: str = "output",
                       create_folder: bool = False) -> Path:
    """check_output for a file whose name must end in one of `suffixes` (".png", ".html", ".npz")."""
    allowed = tuple(suffix.lower() for suffix in suffixes)
    name = _absolute(path).name
    if not name.lower().endswith(allowed):
        raise BadInputError(f"the {what} {path} must end in {' or '.join(allowed)}")
    return check_output(path, inputs, overwrite=overwrite, allow_link_replace=allow_link_replace, what=what,
                        create_folder=create_folder)


def check_image_output(png: PathLike, inputs: Iterable[PathLike] = (), *, overwrite: bool = False) -> Path:
    """check_plain_output for a PNG figure (its folder is made when missing)."""
    return check_plain_output(png, (".png",), inputs, overwrite=overwrite, what="image", create_folder=True)


def _final_mode(target: Path) -> int:
    """The permission bits the finished file gets: the replaced file's, else the umask's default."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(out: PathLike) -> Iterator[Path]:
    """Yield a fresh empty file beside `out` (open it for writing, e.g. h5py mode "w"); when the block
    ends without an exception it is synced and renamed onto `out` (replacing a symlink itself, never
    its target); on any exception, KeyboardInterrupt included, it is removed and `out` is untouched.
    A SIGKILL leaves `out` whole and a hidden `.NAME.*.part` file beside it."""
    target = _absolute(out)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, _final_mode(target))
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: some file systems refuse to sync a folder)."""
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
