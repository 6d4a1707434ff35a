"""Paths named by annotation files stay inside the dataset, and only regular files of sane size are opened.

Annotation files are data, not configuration: an `image_path` of `../../home/x/.ssh/id_rsa`, a COCO `file_name` of
`/etc/shadow` or a VinDr `image_id` of `../../dev/zero` must not make the build read (or reveal the existence of)
files outside the dataset, and a FIFO or device must not hang it. Two checks, used by every adapter and reader:

  * `PathGuard.check(path)`: the path, resolved with every symbolic link followed (`os.path.realpath`), must lie
    under one of the guard's folders (the dataset root, the configured image or mask folders, themselves
    resolved). Otherwise `InputError(reason='outside_root')`, with the same message whether or not the target
    exists, so a reject tells nothing about the machine's files. The folders come from the config (the user's
    own choice); only what the annotation files name is confined to them.
  * `regular_file(path, max_bytes)`: `os.stat` (no open: opening a FIFO blocks) says the path is a regular file
    no larger than `max_bytes`; else `missing_file`, `not_a_file` (folder, FIFO, socket, device) or `too_large`.

Pure standard library (no numpy, no jax), so any worker or segmenter can import it.
"""

from __future__ import annotations

import os
import stat
from typing import Iterable

from data_gen.errors import InputError

# Files larger than this are refused unread (`image.max_file_mb` overrides it for images): a large uncompressed
# CT volume is a few GB; anything bigger is a mistake, or /dev/zero behind a link.
DEFAULT_MAX_FILE_MB = 4096.0


def max_bytes(megabytes: float) -> int:
    """`image.max_file_mb` (MiB) -> bytes."""
    return int(megabytes * 1024 * 1024)


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class PathGuard:
    """Confines paths to a set of folders (see the module docstring).

    Args:
      folders: the allowed folders (the dataset root, image folders, mask roots); empty or None entries are
        ignored. Each is resolved once, symbolic links included.
      what: the config keys that name the folders, for the message (e.g. "adapter.root or adapter.image_dir").

    Resolving a path costs a system call per path component; the resolved parent folders are cached per guard,
    so an adapter checking 100k images in a few folders pays about one `lstat` per image.
    """

    def __init__(self, folders: Iterable[str | None], what: str = "adapter.root"):
        self.folders = tuple(dict.fromkeys(os.path.realpath(os.path.expanduser(str(f))) for f in folders if f))
        self.what = what
        self._parents: dict[str, str] = {}

    def resolve(self, path: str) -> str:
        """`os.path.realpath(path)`, with the parent folder's resolution cached."""
        path = os.path.expanduser(str(path))
        head, tail = os.path.split(path)
        if tail in ("", ".", "..") or not head:
            return os.path.realpath(path)
        parent = self._parents.get(head)
        if parent is None:
            parent = self._parents[head] = os.path.realpath(head)
        joined = os.path.join(parent, tail)
        return os.path.realpath(joined) if os.path.islink(joined) else joined

    def inside(self, path: str) -> bool:
        real = self.resolve(path)
        return any(_is_under(real, f) for f in self.folders)

    def check(self, path: str, *, field: str = "") -> str:
        """The resolved path when it lies under one of the folders.

        Raises:
          InputError(reason='outside_root'): naming the path as written (never its resolved target) and the
            config keys of the allowed folders; the same message whether or not the target exists.
        """
        real = self.resolve(path)
        if any(_is_under(real, f) for f in self.folders):
            return real
        raise InputError(f"the path leads outside the dataset (after '..', absolute paths and symbolic links); "
                         f"files must lie under {self.what}: move them there or point {self.what} at a folder "
                         "that holds them", path=str(path), field=field, reason="outside_root")


def regular_file(path: str, limit: int | None = None) -> os.stat_result:
    """`os.stat(path)` for a regular file of at most `limit` bytes (symbolic links followed).

    Raises:
      InputError: `missing_file`, `not_a_file` (a folder, FIFO, socket or device: opening one can block forever
        or never end), `too_large` (over `limit`), naming the file.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError("file not found; check the dataset root and the adapter's paths", path=path,
                         reason="missing_file") from None
    except OSError as e:  # a symbolic link loop, a permission problem on a parent folder, a name too long
        raise InputError(f"cannot read the file ({e.strerror or e}); check the path and its permissions",
                         path=path, reason="unreadable") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise InputError(f"{kind}, not a regular file: only regular files are read", path=path,
                         reason="not_a_file")
    if limit is not None and st.st_size > limit:
        raise InputError(f"{st.st_size / 2**20:.0f} MiB is over the {limit / 2**20:.0f} MiB limit "
                         "(image.max_file_mb); raise the limit if the file is genuine", path=path,
                         reason="too_large")
    return st
