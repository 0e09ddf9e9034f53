"""Guest names as each toolstack allows them.

A guest name comes from the user, from a hook's arguments (libvirt runs
``hooks/qemu NAME ...``) or from a configuration file, so pcipass accepts what
the toolstack accepts and refuses only what would be unsafe for pcipass:

* libvirt refuses an empty name and a name with ``/`` (the domain's file is
  ``/etc/libvirt/qemu/NAME.xml``; virDomainDefParseXML) or a newline; every
  other character is allowed: ``web server``, ``foo=1,bar=2``, ``a:b``,
  ``día``.
* xl takes a name made only of digits as a domain id (libxl's
  ``libxl_domain_qualifier_to_domid``), so such a name cannot name an xl
  guest; otherwise xl accepts what libvirt accepts.

Always refused, whatever the toolstack: control characters (a newline in a
name would split a log line, a message or a record), ``.`` and ``..``, and a
name too long to be a file name (NAME plus ``.xml`` must fit the 255-byte
NAME_MAX of Linux file systems).

A checked name is used as a path part only where the toolstack itself uses
it so (``/etc/xen/NAME``, ``/etc/libvirt/qemu/NAME.xml``): ``/`` and NUL are
refused and ``.``/``..`` too, so the part stays one component of its
directory.  Names reach programs only as single ``argv`` elements, never a
shell.
"""

from __future__ import annotations

import unicodedata

from pcipass.errors import UsageError

# NAME.xml (libvirt) or NAME.cfg (xl) must be one file name.
MAX_NAME_BYTES = 255 - len(".xml")

TOOLSTACKS = ("libvirt", "xl", "xm")


def _bad_character(name: str) -> str | None:
    for char in name:
        if char == "/":
            return "'/'"
        category = unicodedata.category(char)
        # Cc: C0/C1 controls and DEL; Zl/Zp: Unicode line and paragraph
        # separators, which also end a line in many readers.
        if category in ("Cc", "Zl", "Zp"):
            return f"a control character (U+{ord(char):04X})"
        if category == "Cs":  # bytes that were not UTF-8 (surrogateescape)
            return "bytes that are not UTF-8"
    return None


def check_guest_name(name: str, toolstack: str | None = None) -> str:
    """Return ``name`` if ``toolstack`` (or any toolstack, when None) can
    name a guest so, else raise :class:`UsageError`."""
    shown = f"guest {name!r}"
    if not name:
        raise UsageError("guest ''", "a guest name cannot be empty")
    bad = _bad_character(name)
    if bad is not None:
        raise UsageError(shown, f"a guest name cannot contain {bad}")
    if name in (".", ".."):
        raise UsageError(shown, "not a guest name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise UsageError(shown[:60] + "...", f"longer than {MAX_NAME_BYTES} bytes")
    if toolstack in ("xl", "xm") and name.isdigit():
        raise UsageError(
            shown,
            f"{toolstack} reads a name made of digits as a domain id",
            "give the guest a name with a letter in it",
        )
    return name
