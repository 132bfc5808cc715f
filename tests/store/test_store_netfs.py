"""Stores refuse network file systems, where SQLite's locking is unreliable."""

from __future__ import annotations

import pytest

from mason.store import NetworkFilesystemError, Store
from mason.store import _fs

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 253:1 / / rw,relatime - ext4 /dev/vda1 rw
80 27 0:50 / /mnt/nfs rw,relatime - nfs4 server:/export rw,vers=4.2
81 27 0:51 / /mnt/smb\040share rw,relatime - cifs //server/share rw
82 80 0:52 / /mnt/nfs/local rw,relatime - tmpfs tmpfs rw
83 27 0:53 / /home/u/remote rw - fuse.sshfs u@host:/ rw
"""


def test_parse_mountinfo_unescapes_paths():
    mounts = _fs.parse_mountinfo(MOUNTINFO)
    assert ("/mnt/smb share", "cifs") in mounts and ("/", "ext4") in mounts
    assert len(mounts) == 6


@pytest.mark.parametrize("path, fstype", [
    ("/home/u/data.db", "ext4"),
    ("/mnt/nfs/data.db", "nfs4"),
    ("/mnt/nfsx/data.db", "ext4"),          # a prefix of the name is not a mount point
    ("/mnt/nfs/local/data.db", "tmpfs"),    # the longest mount point wins
    ("/mnt/smb share/a/b.db", "cifs"),
    ("/home/u/remote/x.db", "fuse.sshfs"),
])
def test_filesystem_type_takes_the_longest_mount_point(path, fstype):
    assert _fs.filesystem_type(path, _fs.parse_mountinfo(MOUNTINFO)) == fstype


def test_this_machines_temp_dir_is_local(tmp_path):
    assert _fs.is_network_fs(str(tmp_path)) is None
    assert _fs.filesystem_type(str(tmp_path)) is not None  # the real mount table was read


@pytest.mark.parametrize("fstype", ["nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs"])
def test_store_on_a_network_fs_is_refused(tmp_path, monkeypatch, fstype):
    monkeypatch.setattr(_fs, "_mounts", lambda: [("/", "ext4"), (str(tmp_path), fstype)])
    path = tmp_path / "shared.db"
    with pytest.raises(NetworkFilesystemError) as info:
        Store(path)
    message = str(info.value)
    assert fstype in message and "allow_network_fs=True" in message and "redis://" in message
    assert info.value.fstype == fstype and info.value.path == str(path)
    assert not path.exists(), "the refusal must come before SQLite touches the file"
    with Store(path, allow_network_fs=True) as store:  # the explicit override
        store["k"] = 1
        assert store["k"] == 1


def test_local_fuse_is_not_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(_fs, "_mounts", lambda: [("/", "ext4"), (str(tmp_path), "fuse.ntfs-3g")])
    with Store(tmp_path / "ok.db") as store:
        store["k"] = 1
