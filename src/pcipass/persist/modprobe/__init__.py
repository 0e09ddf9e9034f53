"""Persistent hiding through modprobe configuration, edited line by line.

This package is split along its seams: :mod:`.syntax` (kmod's text model),
:mod:`pcipass.persist.stub_values` (``hide=``/``ids=`` values, shared with the
kernel command line), :mod:`.edit` (adding and removing lines),
:mod:`.installed` (what all the host's files configure, as the types of
:mod:`pcipass.host.persisted`).  The rules over that (PP009/PP010) are in
:mod:`pcipass.policy.persist_rules`.  The names below are re-exported so
callers keep one import path.

The text model follows kmod 30 exactly (``libkmod-config.c``,
``getline_wrapped`` in ``libkmod-util.c``) because kmod is what reads these
files at boot on every current system:

* a logical line ends at ``\\n``; backslash-newline joins physical lines, and
  a backslash before any other byte is dropped (the byte is kept);
* a logical line starting with ``#`` is a comment *including its
  continuations*; words are separated by space and tab only, so a ``\\r``
  of a CRLF file is part of the last word;
* module names treat ``-`` and ``_`` alike (``underscores()``);
* ``options`` lines for one module are concatenated in file order (files
  sorted by name across the modprobe.d directories) and the kernel command
  line comes last; ``hide`` and ``ids`` are charp/string parameters, so when
  one is given twice the kernel keeps the *last* value and the earlier
  devices are silently not hidden (rule PP009);
* only the *first* ``install`` and the *first* ``softdep`` for a module count,
  and a module that has a softdep has its install command ignored
  (``mod->ignorecmd``; all three checked with the real kmod in the tests).

Every edit keeps all other bytes of the file.  New lines always end in
``\\n`` (kmod would pass a ``\\r`` on to the shell of an install command).

How pcipass knows what it added
-------------------------------
The lines themselves stay exactly the document's (Procedure 15.3):
``install bnx2 /sbin/modprobe pciback; /sbin/modprobe --first-time
--ignore-install bnx2`` and ``options pciback hide=(0000:09:00.0)``.  The
line *before* each line pcipass added or changed is a marker comment::

    # pcipass: line for=0000:09:00.0
    install bnx2 /sbin/modprobe pciback; /sbin/modprobe --first-time --ignore-install bnx2
    # pcipass: line hide=0000:09:00.0,0000:0a:04.1
    options pciback hide=(0000:09:00.0)(0000:0a:04.1)

Marker words: ``line`` (pcipass wrote the whole line), ``param`` (pcipass
appended the ``hide=``/``ids=`` parameter to the user's options line),
``hide=A,B`` (addresses pcipass put in the value), ``ids=ID@A,...`` (vfio-pci
ids pcipass put in the value, and for which device), ``for=A,B`` (devices an
install/softdep/alias line is there for).  Removal takes away exactly what
the markers name and nothing else; a device hidden by the user's own line is
reported back as ``user_held`` and left alone.  Since the markers are
comments, kmod and module-init-tools ignore them.
"""

from __future__ import annotations

from pcipass.host.persisted import HideEntry, OrderingEntry, PersistentState, module_key
from pcipass.persist.modprobe.edit import (
    HEADER,
    AddResult,
    HideDevice,
    HidePlan,
    RemoveResult,
    add_hide,
    install_line,
    only_header_left,
    plan_add_hide,
    plan_remove_hide,
    remove_hide,
    repair_rhel5_alias,
)
from pcipass.persist.modprobe.installed import (
    MODPROBE_DIRS,
    collect_modprobe_files,
    kmod_file_order,
    read_one_file,
    read_persistent_hides,
)
from pcipass.persist.modprobe.syntax import (
    MARKER_PREFIX,
    Directive,
    Document,
    Logical,
    Marker,
    Param,
    parse_marker,
    parse_params,
    split_logical,
)
from pcipass.persist.stub_values import (
    ValueItem,
    hide_items,
    id_items,
    normalise_device_id,
    parse_hide_value,
)

__all__ = [
    "HEADER",
    "MARKER_PREFIX",
    "MODPROBE_DIRS",
    "AddResult",
    "Directive",
    "Document",
    "HideDevice",
    "HideEntry",
    "HidePlan",
    "Logical",
    "Marker",
    "OrderingEntry",
    "Param",
    "PersistentState",
    "RemoveResult",
    "ValueItem",
    "add_hide",
    "collect_modprobe_files",
    "hide_items",
    "id_items",
    "install_line",
    "kmod_file_order",
    "module_key",
    "normalise_device_id",
    "only_header_left",
    "parse_hide_value",
    "parse_marker",
    "parse_params",
    "plan_add_hide",
    "plan_remove_hide",
    "read_one_file",
    "read_persistent_hides",
    "remove_hide",
    "repair_rhel5_alias",
    "split_logical",
]
