"""Refusing network file systems.

SQLite relies on the file system's byte-range locks (``fcntl`` on POSIX, ``LockFileEx`` on
Windows) and, in WAL mode, on a memory-mapped ``-shm`` file shared by every process that has
the database open.  On NFS and SMB the locks are advisory, cached or simply broken, and a
shared mapping is not shared between machines at all; SQLite's own documentation warns
against it, and it is where diskcache and sqlitedict users report corrupted databases.  So a
store refuses to open a file there unless told ``allow_network_fs=True``.

Detection reads the mount table (``/proc/self/mountinfo`` on Linux, ``mount`` on macOS and
the BSDs) and takes the file system of the longest mount point that contains the store's
directory; on Windows it asks ``GetDriveTypeW`` and treats UNC paths as remote.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["NETWORK_FS_TYPES", "filesystem_type", "is_network_fs", "parse_mountinfo"]

# File system types whose locking SQLite cannot rely on, matched exactly (lower case).  FUSE
# file systems report "fuse.<name>": only the network ones are listed, local FUSE mounts pass.
NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "nfsd", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "ncp", "afs",
    "coda", "9p", "v9fs", "ceph", "glusterfs", "fuse.glusterfs", "lustre", "gpfs", "fuse.sshfs",
    "sshfs", "fuse.s3fs", "fuse.rclone", "davfs", "fuse.davfs2", "webdav", "afpfs", "ocfs2",
    "gfs2", "beegfs", "orangefs", "pvfs2", "fuse.juicefs", "fuse.gcsfuse", "fuse.goofys",
})

_MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as octal escapes.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """``(mount_point, fstype)`` for each line of a Linux ``mountinfo`` table."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or not tail:
            continue
        mounts.append((_unescape(fields[4]), tail[0]))
    return mounts


def _parse_bsd_mount(text: str) -> list[tuple[str, str]]:
    # "//user@server/share on /Volumes/share (smbfs, nodev, nosuid, mounted by user)"
    mounts = []
    for line in text.splitlines():
        _, on, rest = line.partition(" on ")
        if not on or " (" not in rest:
            continue
        point, _, opts = rest.rpartition(" (")
        mounts.append((point, opts.split(",")[0].strip(" )")))
    return mounts


def _mounts() -> list[tuple[str, str]]:
    try:
        with open(_MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo(f.read())
    except OSError:
        pass
    try:
        text = subprocess.run(["mount"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return _parse_bsd_mount(text)


def filesystem_type(path: str, mounts: list[tuple[str, str]] | None = None) -> str | None:
    """The type of the file system holding ``path`` (which need not exist yet), or None."""
    path = os.path.realpath(path)
    if mounts is None:
        mounts = _mounts()
    best, best_type = -1, None
    for point, fstype in mounts:
        if point == "/" or path == point or path.startswith(point.rstrip("/") + "/"):
            if len(point) > best:
                best, best_type = len(point), fstype
    return best_type


def _windows_remote(path: str) -> str | None:
    path = os.path.abspath(path)
    if path.startswith("\\\\") and not path.startswith("\\\\?\\"):
        return "unc"
    if path.startswith("\\\\?\\UNC\\"):
        return "unc"
    import ctypes  # Windows only

    drive = os.path.splitdrive(path)[0] + "\\"
    DRIVE_REMOTE = 4
    if ctypes.windll.kernel32.GetDriveTypeW(drive) == DRIVE_REMOTE:
        return "remote drive"
    return None


def is_network_fs(path: str) -> str | None:
    """The network file system type holding ``path``, or None when it is local."""
    if sys.platform == "win32":
        return _windows_remote(path)
    fstype = filesystem_type(path)
    if fstype is None:
        return None
    if fstype.lower() in NETWORK_FS_TYPES:
        return fstype
    return None
