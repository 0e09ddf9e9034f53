"""Adding and removing pcipass's hide lines in one modprobe file.

Every edit keeps all other bytes of the file.  New lines always end in
``\\n`` (kmod would pass a ``\\r`` on to the shell of an install command).
What pcipass wrote is known from its marker comments (see
:mod:`pcipass.persist.modprobe`); removal takes away exactly what they name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from pcipass.address import PciAddress, format_hide_list
from pcipass.backend import Backend
from pcipass.errors import ConfigSyntaxError, UsageError
from pcipass.host.persisted import module_key
from pcipass.host.platform import (
    PersistMethod,
    Platform,
)
from pcipass.host.root import safe_name
from pcipass.host.stubs import XEN_MODULE, XEN_MODULES
from pcipass.persist.modprobe.installed import read_one_file
from pcipass.persist.modprobe.syntax import (
    SPACE,
    VFIO_STUB_KEY,
    XEN_STUB_KEYS,
    Directive,
    Document,
    Marker,
    Param,
    new_marker,
)
from pcipass.persist.stub_values import (
    ISSPACE,
    ValueItem,
    hide_items,
    id_items,
    normalise_device_id,
)
from pcipass.record import dataclass, replace

#: First lines of a modprobe file pcipass creates (so it can delete it again).
HEADER = (
    b"# Managed by pcipass: PCI devices hidden from the host at boot.\n"
    b'# A "# pcipass:" comment marks the line below it as pcipass\'s; '
    b"`pcipass unhide --persist` removes those.\n"
)

# --------------------------------------------------------------------------
# What to write
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HideDevice:
    """One device to hide at boot.

    ``driver`` is the host driver that would otherwise claim it (bnx2): it
    gets the install/softdep line that loads the stub first.  ``device_id``
    (``8086:10d3``) is needed for vfio-pci, which matches by id, not address.
    """

    address: PciAddress
    driver: str | None = None
    device_id: str | None = None

    def __post_init__(self) -> None:
        if self.driver is not None:
            # The driver name ends up in an install command run by /bin/sh.
            safe_name("driver", self.driver)
        if self.device_id is not None:
            object.__setattr__(self, "device_id", normalise_device_id(self.device_id))


@dataclass(frozen=True)
class HidePlan:
    """What ``hide --persist`` writes into one modprobe file."""

    form: PersistMethod  # RHEL5 or MODPROBE_D
    backend: Backend
    stub_module: str  # the stub that exists on the platform: pciback, xen-pciback, vfio-pci
    devices: tuple[HideDevice, ...]

    def __post_init__(self) -> None:
        if self.form is PersistMethod.CMDLINE:
            raise UsageError("hide plan", "the cmdline method is written by persist.cmdline")
        if self.form is PersistMethod.RHEL5 and self.backend is Backend.VFIO:
            raise UsageError("hide plan", "the RHEL 5 form hides devices for pciback only")
        expected = set(XEN_STUB_KEYS) if self.backend is Backend.PCIBACK else {VFIO_STUB_KEY}
        if module_key(self.stub_module) not in expected:
            raise UsageError(
                f"stub {self.stub_module!r}", f"not a stub for the {self.backend} backend"
            )
        if self.backend is Backend.VFIO:
            for device in self.devices:
                if device.device_id is None:
                    raise UsageError(
                        str(device.address), "vfio-pci ids= needs the vendor:device id"
                    )

    @classmethod
    def for_platform(
        cls,
        platform: Platform,
        backend: Backend,
        devices: Iterable[HideDevice],
        method: PersistMethod | None = None,
    ) -> HidePlan:
        return cls(
            method or platform.method_for(backend),
            backend,
            platform.stub_module(backend),
            tuple(devices),
        )

    @property
    def written_module(self) -> str:
        """The module named in the lines: the document's ``pciback`` for RHEL 5."""
        return "pciback" if self.form is PersistMethod.RHEL5 else self.stub_module

    @property
    def needs_alias(self) -> bool:
        """RHEL 5 lines on a kernel whose stub is xen-pciback (modprobe then
        says "Module pciback not found")."""
        return self.form is PersistMethod.RHEL5 and module_key(self.stub_module) != "pciback"

    @property
    def param(self) -> str:
        return "ids" if self.backend is Backend.VFIO else "hide"


def install_line(driver: str, stub: str = "pciback") -> str:
    """The document's install line (Procedure 15.3 step 1)."""
    return (
        f"install {driver} /sbin/modprobe {stub}; "
        f"/sbin/modprobe --first-time --ignore-install {driver}"
    )


@dataclass(frozen=True)
class AddResult:
    text: bytes
    added: tuple[PciAddress, ...]
    already: tuple[PciAddress, ...]  # hidden already (by pcipass or by the user's own line)


@dataclass(frozen=True)
class RemoveResult:
    text: bytes
    removed: tuple[PciAddress, ...]
    user_held: tuple[tuple[PciAddress, int], ...]  # still hidden by a user line (line number)
    not_found: tuple[PciAddress, ...]


@dataclass(frozen=True)
class _Splice:
    offset: int
    delete: int
    insert: bytes
    order: int = 0  # among inserts at one offset: lower ends up first


def _apply(data: bytes, splices: Sequence[_Splice]) -> bytes:
    result = data
    for splice in sorted(splices, key=lambda s: (s.offset, s.order), reverse=True):
        result = result[: splice.offset] + splice.insert + result[splice.offset + splice.delete :]
    return result


def add_hide(text: bytes | None, plan: HidePlan, *, path: str = "modprobe file") -> bytes:
    """``text`` with ``plan``'s devices hidden (see :func:`plan_add_hide`)."""
    return plan_add_hide(text, plan, path=path).text


def plan_add_hide(text: bytes | None, plan: HidePlan, *, path: str = "modprobe file") -> AddResult:
    """Add the devices of ``plan`` to a modprobe file's text.

    A new hide value is merged into the one effective ``options`` line of the
    stub (PP009: a second line would silently undo the first), or into a new
    line when there is none.  ``text is None`` means the file does not exist;
    the result then starts with :data:`HEADER`.  Raises ConfigSyntaxError
    when the file holds something pcipass cannot merge with safely.
    """
    data = HEADER if text is None else text
    added: list[PciAddress] = []
    already: list[PciAddress] = []
    for device in plan.devices:
        data, was_added = _add_one(data, plan, device, path)
        _verify_hidden(data, plan, device, path)
        (added if was_added else already).append(device.address)
    return AddResult(data, tuple(added), tuple(already))


def _verify_hidden(data: bytes, plan: HidePlan, device: HideDevice, path: str) -> None:
    """Read the result back the way kmod would; refuse an edit that would not work."""
    state = read_one_file(path, data)
    if plan.backend is Backend.VFIO:
        held = device.device_id in state.hidden_ids()
    else:
        held = device.address in state.hidden()
    if not held:
        raise ConfigSyntaxError(
            path,
            f"after pcipass's edit kmod would still not hide {device.address} "
            "(an alias or line in the file redirects it)",
        )


def _stub_group(doc: Document, plan: HidePlan) -> set[str]:
    """Module keys whose options reach the stub (the stub, the written name, aliases)."""
    group = {module_key(plan.stub_module), module_key(plan.written_module)}
    for directive in doc.directives:
        if directive.command == "alias" and module_key(directive.target) in group:
            group.add(directive.key)
    return group


def _add_one(data: bytes, plan: HidePlan, device: HideDevice, path: str) -> tuple[bytes, bool]:
    doc = Document.parse(data)
    group = _stub_group(doc, plan)
    options = [d for d in doc.directives if d.command == "options" and d.key in group]
    with_param = [d for d in options if d.last_param(plan.param) is not None]
    splices: list[_Splice] = []
    new_lines: list[bytes] = []
    address = device.address

    target = with_param[-1] if with_param else None
    if target is not None:
        state = _value_state(target, plan, path)
        if state.holds(device):
            if not state.managed(device, target.marker):
                return data, False  # the user's own line hides it already
            if plan.backend is Backend.VFIO and target.marker is not None:
                marker = target.marker
                if (state.device_id(device), address) not in marker.ids:
                    pairs = (*marker.ids, (state.device_id(device), address))
                    splices.append(_rewrite_marker(target, replace(marker, ids=pairs)))
        else:
            splices.append(_append_to_value(target, plan, device, state))
            marker = target.marker or Marker(target.line)
            if plan.backend is Backend.VFIO:
                assert device.device_id is not None
                marker = replace(marker, ids=(*marker.ids, (device.device_id, address)))
            else:
                marker = replace(marker, hide=(*marker.hide, address))
            splices.append(_set_marker(target, marker))
    elif options:
        # An options line for the stub without the parameter: add it there
        # rather than writing a second options line.
        last = options[-1]
        end = _last_non_space(last.line.text, last.rest_start)
        insert = f" {plan.param}={_first_value(plan, device)}".encode("latin-1")
        splices.append(_Splice(last.line.offset_after(end - 1), 0, insert))
        marker = last.marker or Marker(last.line)
        marker = replace(marker, param=True)
        marker = _with_value_item(marker, plan, device)
        splices.append(_set_marker(last, marker))
    else:
        marker = _with_value_item(new_marker(), plan, device)
        line = f"options {plan.written_module} {plan.param}={_first_value(plan, device)}\n"
        new_lines.append(marker.render() + line.encode("latin-1"))

    ordering = _ordering_lines(doc, plan, device, path, splices)
    point = doc.insertion_point()
    block = b"".join(ordering + new_lines)
    if block:
        splices.append(_Splice(point, 0, block, order=-1))
    result = _apply(data, splices)
    return result, result != data


@dataclass(frozen=True)
class _ValueState:
    addresses: tuple[PciAddress, ...]
    ids: tuple[str, ...]
    items: tuple[ValueItem, ...]
    param: Param
    backend: Backend

    def device_id(self, device: HideDevice) -> str:
        assert device.device_id is not None
        return device.device_id

    def holds(self, device: HideDevice) -> bool:
        if self.backend is Backend.VFIO:
            return self.device_id(device) in self.ids
        return device.address in self.addresses

    def managed(self, device: HideDevice, marker: Marker | None) -> bool:
        if marker is None:
            return False
        if self.backend is Backend.VFIO:
            return any(i == self.device_id(device) for i, _ in marker.ids)
        return device.address in marker.hide


def _value_state(directive: Directive, plan: HidePlan, path: str) -> _ValueState:
    param = directive.last_param(plan.param)
    assert param is not None
    text = directive.line.text
    try:
        if plan.backend is Backend.VFIO:
            ids = id_items(text, param.value_start, param.value_end)
            found = tuple(i for i, _ in ids)
            return _ValueState((), found, tuple(v for _, v in ids), param, plan.backend)
        groups = hide_items(text, param.value_start, param.value_end)
    except UsageError as error:
        raise ConfigSyntaxError(
            path,
            f"cannot merge into {plan.param}={text[param.value_start : param.value_end]!r}: "
            f"{error.problem}",
            directive.line.first_line,
        ) from None
    return _ValueState(
        tuple(a for a, _ in groups), (), tuple(v for _, v in groups), param, plan.backend
    )


def _last_non_space(text: str, floor: int) -> int:
    end = len(text)
    while end > floor and text[end - 1] in ISSPACE:
        end -= 1
    return end


def _first_value(plan: HidePlan, device: HideDevice) -> str:
    if plan.backend is Backend.VFIO:
        assert device.device_id is not None
        return device.device_id
    return format_hide_list([device.address])


def _with_value_item(marker: Marker, plan: HidePlan, device: HideDevice) -> Marker:
    if plan.backend is Backend.VFIO:
        assert device.device_id is not None
        return replace(marker, ids=(*marker.ids, (device.device_id, device.address)))
    return replace(marker, hide=(*marker.hide, device.address))


def _append_to_value(
    directive: Directive, plan: HidePlan, device: HideDevice, state: _ValueState
) -> _Splice:
    line = directive.line
    param = state.param
    if plan.backend is Backend.VFIO:
        insert = ("," if state.items else "") + _first_value(plan, device)
    else:
        insert = _first_value(plan, device)
    if param.value_end > param.value_start:
        offset = line.offset_after(param.value_end - 1)
    else:
        # Empty value: right after "=" (or after the opening quote).
        offset = line.offset_after(param.value_start - 1)
    return _Splice(offset, 0, insert.encode("latin-1"))


def _set_marker(directive: Directive, marker: Marker) -> _Splice:
    if directive.marker is not None:
        return _rewrite_marker(directive, marker)
    return _Splice(directive.line.start, 0, marker.render(), order=1)


def _rewrite_marker(directive: Directive, marker: Marker) -> _Splice:
    old = directive.marker
    assert old is not None
    return _Splice(old.line.start, old.line.end - old.line.start, marker.render())


def _ordering_lines(
    doc: Document, plan: HidePlan, device: HideDevice, path: str, splices: list[_Splice]
) -> list[bytes]:
    """The alias/install/softdep lines that make the stub load before the driver."""
    new: list[bytes] = []
    address = device.address
    stub = plan.stub_module
    if plan.needs_alias:
        aliases = doc.find("alias", "pciback")
        if not aliases:
            marker = new_marker(for_=(address,))
            new.append(marker.render() + f"alias pciback {stub}\n".encode("latin-1"))
        else:
            alias = aliases[0]
            if module_key(alias.target) != module_key(stub):
                raise ConfigSyntaxError(
                    path,
                    f"'alias pciback {alias.target}' points pciback elsewhere, not at {stub}",
                    alias.line.first_line,
                )
            _extend_for(alias, address, splices)
    written = module_key(plan.written_module)
    for alias in doc.find("alias", written):
        if not plan.needs_alias and module_key(alias.target) != written:
            raise ConfigSyntaxError(
                path,
                f"'alias {alias.module} {alias.target}' sends {plan.written_module} to another "
                "module, so its options would not reach the stub",
                alias.line.first_line,
            )
    if device.driver is None:
        return new
    driver = device.driver
    if plan.form is PersistMethod.RHEL5:
        installs = doc.find("install", module_key(driver))
        if not installs:
            marker = new_marker(for_=(address,))
            new.append(marker.render() + (install_line(driver) + "\n").encode("latin-1"))
            return new
        first = installs[0]  # kmod and module-init-tools run the first one only
        if not _loads_stub(first.rest, plan):
            raise ConfigSyntaxError(
                path,
                f"{driver} already has its own install command, which does not load pciback; "
                f"pcipass will not merge shell commands (add '/sbin/modprobe pciback;' to it)",
                first.line.first_line,
            )
        _extend_for(first, address, splices)
        return new
    softdeps = doc.find("softdep", module_key(driver))
    if not softdeps:
        marker = new_marker(for_=(address,))
        new.append(marker.render() + f"softdep {driver} pre: {stub}\n".encode("latin-1"))
        return new
    first = softdeps[0]  # kmod uses the first softdep of a module only
    if not _softdep_loads(first.rest, stub):
        raise ConfigSyntaxError(
            path,
            f"{driver} already has a softdep without {stub}; kmod uses only the first softdep "
            f"of a module (add '{stub}' to its pre: list)",
            first.line.first_line,
        )
    _extend_for(first, address, splices)
    return new


def _extend_for(directive: Directive, address: PciAddress, splices: list[_Splice]) -> None:
    marker = directive.marker
    if marker is None or not marker.whole_line or not marker.for_ or address in marker.for_:
        return  # the user's own line (or already ours for this device): leave it be
    splices.append(_rewrite_marker(directive, replace(marker, for_=(*marker.for_, address))))


def _loads_stub(command: str, plan: HidePlan) -> bool:
    names = "|".join(re.escape(n) for n in (*XEN_MODULES, module_key(XEN_MODULE)))
    return re.search(rf"modprobe\s+(?:-\S+\s+)*(?:{names})(?:\s|;|$)", command) is not None


def _softdep_loads(rest: str, stub: str) -> bool:
    words = rest.split()
    if "pre:" not in words:
        return False
    pre = words[words.index("pre:") + 1 :]
    if "post:" in pre:
        pre = pre[: pre.index("post:")]
    return module_key(stub) in {module_key(w) for w in pre}


# --------------------------------------------------------------------------
# Removal
# --------------------------------------------------------------------------


def remove_hide(
    text: bytes | None, addresses: Iterable[PciAddress], *, path: str = "modprobe file"
) -> bytes:
    """``text`` without what pcipass added for ``addresses`` (see :func:`plan_remove_hide`)."""
    return plan_remove_hide(text, addresses, path=path).text


def plan_remove_hide(
    text: bytes | None, addresses: Iterable[PciAddress], *, path: str = "modprobe file"
) -> RemoveResult:
    """Remove exactly what the pcipass markers say was added for ``addresses``.

    An address in a hide value pcipass did not add is ``user_held``: the
    user's own line stays as it is, and the caller says so.  An install or
    softdep line stays while another device still needs it; a hide value
    loses just the address, and the line (or the parameter pcipass appended)
    goes when it is empty.
    """
    data = text or b""
    removed: list[PciAddress] = []
    held: list[tuple[PciAddress, int]] = []
    missing: list[PciAddress] = []
    for address in addresses:
        data, was_removed, user_line = _remove_one(data, address, path)
        if was_removed:
            removed.append(address)
        if user_line is not None:
            held.append((address, user_line))
        if not was_removed and user_line is None:
            missing.append(address)
    return RemoveResult(data, tuple(removed), tuple(held), tuple(missing))


def only_header_left(data: bytes | None) -> bool:
    """True when a file pcipass created holds nothing but its header: delete it."""
    return data is not None and data == HEADER


def _remove_one(data: bytes, address: PciAddress, path: str) -> tuple[bytes, bool, int | None]:
    doc = Document.parse(data)
    splices: list[_Splice] = []
    removed = False
    user_line: int | None = None
    for directive in doc.directives:
        marker = directive.marker
        ours = marker is not None and address in marker.addresses()
        if directive.command == "options":
            held = _holds_unmarked(directive, address, marker)
            if held:
                user_line = directive.line.first_line
            if ours:
                assert marker is not None
                splices.extend(_remove_from_options(directive, marker, address, path))
                removed = True
        elif marker is not None and marker.whole_line and address in marker.for_:
            remaining = tuple(a for a in marker.for_ if a != address)
            if remaining:
                splices.append(_rewrite_marker(directive, replace(marker, for_=remaining)))
            else:
                splices.append(_delete_directive(directive))
            removed = True
    return _apply(data, splices), removed, user_line


def _holds_unmarked(directive: Directive, address: PciAddress, marker: Marker | None) -> bool:
    param = directive.last_param("hide")
    if param is None:
        return False
    try:
        groups = hide_items(directive.line.text, param.value_start, param.value_end)
    except UsageError:
        return False
    ours = set(marker.hide) if marker is not None else set()
    return any(a == address and a not in ours for a, _ in groups)


def _delete_directive(directive: Directive) -> _Splice:
    start = directive.marker.line.start if directive.marker is not None else directive.line.start
    return _Splice(start, directive.line.end - start, b"")


def _remove_from_options(
    directive: Directive, marker: Marker, address: PciAddress, path: str
) -> list[_Splice]:
    """Take ``address`` out of an options line pcipass added to or wrote."""
    text = directive.line.text
    new_marker = replace(
        marker,
        hide=tuple(a for a in marker.hide if a != address),
        ids=tuple((i, a) for i, a in marker.ids if a != address),
    )
    if any(a == address for _, a in marker.ids):
        key = "ids"
        # vfio-pci matches every device with an id: keep an id another of
        # pcipass's devices still needs.
        drop_ids = {i for i, a in marker.ids if a == address} - {i for i, _ in new_marker.ids}
    elif address in marker.hide:
        key, drop_ids = "hide", set()
    else:
        return [_marker_or_delete(directive, new_marker)]
    param = directive.last_param(key)
    if param is None:  # the parameter was edited away by hand: just forget it
        return [_marker_or_delete(directive, new_marker)]
    try:
        if key == "ids":
            pairs = [(v, i) for i, v in id_items(text, param.value_start, param.value_end)]
        else:
            groups = hide_items(text, param.value_start, param.value_end)
            pairs = [(v, str(a)) for a, v in groups]
    except UsageError as error:
        raise ConfigSyntaxError(
            path, f"cannot edit {key}=: {error.problem}", directive.line.first_line
        ) from None
    if key == "ids":
        drop = [v for v, i in pairs if i in drop_ids]
    else:
        drop = [v for v, a in pairs if a == str(address)]
    if drop and len(drop) == len(pairs):
        if marker.param:  # pcipass appended the parameter to an existing line
            return [
                _delete_param(directive, param),
                _marker_or_delete(directive, replace(new_marker, param=False)),
            ]
        if marker.whole_line and not (new_marker.hide or new_marker.ids):
            return [_delete_directive(directive)]
    splices = [_marker_or_delete(directive, new_marker)]
    splices.extend(_delete_items(directive, drop, comma=(key == "ids")))
    return splices


def _marker_or_delete(directive: Directive, marker: Marker) -> _Splice:
    """Rewrite the marker, or drop it when it no longer names anything."""
    if not (marker.hide or marker.ids or marker.for_):
        old = directive.marker
        assert old is not None
        return _Splice(old.line.start, old.line.end - old.line.start, b"")
    return _rewrite_marker(directive, marker)


def _delete_param(directive: Directive, param: Param) -> _Splice:
    line = directive.line
    text = line.text
    begin = param.start
    while begin > directive.rest_start and text[begin - 1] in SPACE:
        begin -= 1
    end = param.end
    start_offset = line.offsets[begin] if begin < len(text) else line.offsets[-1] + 1
    end_offset = line.offset_after(end - 1)
    return _Splice(start_offset, end_offset - start_offset, b"")


def _delete_items(directive: Directive, drop: list[ValueItem], *, comma: bool) -> list[_Splice]:
    line = directive.line
    text = line.text
    splices: list[_Splice] = []
    for item in drop:
        begin, end = item.start, item.end
        if comma:
            if begin > 0 and text[begin - 1] == ",":
                begin -= 1  # ",ID" is what pcipass appends
            elif end < len(text) and text[end] == ",":
                end += 1
        start_offset = line.offsets[begin]
        end_offset = line.offset_after(end - 1)
        splices.append(_Splice(start_offset, end_offset - start_offset, b""))
    return splices


def repair_rhel5_alias(text: bytes, addresses: Sequence[PciAddress] = ()) -> bytes:
    """Add ``alias pciback xen-pciback`` (marked as pcipass's) to a RHEL 5 file."""
    doc = Document.parse(text)
    if doc.find("alias", "pciback"):
        return text
    marker = new_marker(for_=tuple(addresses))
    block = marker.render() + b"alias pciback xen-pciback\n"
    return _apply(text, [_Splice(doc.insertion_point(), 0, block)])
