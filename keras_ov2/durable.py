"""Files that survive a crash: synced to disk before they count as written."""

import os


def fsync_path(path):
    """Syncs a file's or a folder's contents (a folder's: its entries, so a
    rename into it is on disk)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def durable_replace(partial, path):
    """Renames the finished file `partial` to `path` once its bytes are on
    disk, and syncs the folder, so that a crash leaves the old name or the
    whole file under the new one."""
    fsync_path(partial)
    os.replace(partial, path)
    if os.name != "nt":  # Windows opens no folder; the rename is done
        fsync_path(path.parent)
