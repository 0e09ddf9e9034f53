"""Whether a root has any pcipass state at all, known without SQLite.

Most commands on most hosts run where pcipass has never recorded anything.
A read-only look at an absent ledger gives an empty view, so a reader that
learns here that there is nothing can skip the ledger, and with it sqlite3,
hashlib and the schema (about a third of the start-up cost, issue #13).
Anything unusual (a state directory that cannot be resolved inside the
root, a database, its side files or backups) answers "maybe": the ledger's
own open then decides, with its own refusals and messages.
"""

from __future__ import annotations

import os
import stat

from pcipass.errors import PcipassError
from pcipass.host.confined import host_parts
from pcipass.host.root import HostRoot

#: The database's file name; its side files and markers all start with it.
DB_NAME = "state.db"
#: Copies kept by ``recover --rebuild-ledger`` (their presence means state existed).
BACKUP_DIR = "backups"


def ledger_may_exist(root: HostRoot) -> bool:
    """False only when the state directory is absent, or holds no database,
    side file, in-use marker or backup: then a read-only ledger is empty."""
    if _plainly_absent(root):
        return False
    try:
        real = root.files.real_dir(root.host_path(root.state_dir), create=False)
    except PcipassError:
        return True  # a link out of the root and the like: the ledger refuses it
    if real is None:
        return False
    try:
        names = os.listdir(real)
    except OSError:
        return True
    return any(name.startswith(DB_NAME) or name == BACKUP_DIR for name in names)


def _plainly_absent(root: HostRoot) -> bool:
    """The state directory is missing and no directory on the way to it is a
    symbolic link: resolving it inside the root (openat2, hence ctypes, ~1.5 ms
    of start-up) could not find it either.  Anything else: not known here."""
    path = str(root.prefix)
    for part in host_parts(root.host_path(root.state_dir)):
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if not stat.S_ISDIR(mode):  # a link (followed inside the root), a file: ask the root
            return False
    return False
