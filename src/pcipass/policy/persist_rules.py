"""Rules about persistent hiding: PP009 (a value given twice) and PP010 (a
hiding that silently does not happen at boot).

The modprobe files and the kernel command lines arrive parsed
(:mod:`pcipass.host.persisted`, read by ``persist/``); these rules only look
at them: a hide value given twice (the kernel keeps the last), values the
stub cannot parse, ordering lines that never run, lines the kernel cannot
load, grub files pcipass cannot follow, and a stub set both in modprobe
files and on the command line.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.address import format_hide_list
from pcipass.host.persisted import (
    CmdlineHides,
    GrubProblem,
    OrderingEntry,
    PersistentState,
    module_key,
)
from pcipass.host.platform import (
    PCIPASS_MODPROBE_FILE,
    RHEL5_MODPROBE_FILE,
    Platform,
    StubState,
)
from pcipass.policy.verdict import Finding, Severity

# --------------------------------------------------------------------------
# modprobe files
# --------------------------------------------------------------------------


def persist_finding(
    rule: str,
    code: str,
    severity: str,
    subject: str,
    problem: str,
    *,
    remedy: str = "",
    path: str | None = None,
    line: int | None = None,
) -> Finding:
    """A finding about persistent configuration: ``severity`` "error" (the
    device is not hidden at boot: refuse) or "warning"."""
    level = Severity.REFUSE if severity == "error" else Severity.WARN
    return Finding(rule, level, subject, problem, remedy, code=code, path=path, line=line)


def findings(state: PersistentState, platform: Platform | None = None) -> list[Finding]:
    """PP009 (a hide value overridden by a later one) and the silent failures
    of persistent hiding (PP010): the RHEL 5 lines on a xen-pciback kernel,
    /etc/modprobe.conf on a kmod system, options for a built-in stub, values
    the stub cannot parse, install lines kmod will not run."""
    result: list[Finding] = []
    result.extend(_duplicate_findings(state))
    result.extend(_value_findings(state))
    result.extend(_ordering_findings(state))
    if platform is not None:
        result.extend(_platform_findings(state, platform))
    return result


def _where(path: str, line: int) -> str:
    return f"{path}:{line}"


def _duplicate_findings(state: PersistentState) -> list[Finding]:
    result: list[Finding] = []
    for entry in state.entries:
        if entry.effective:
            continue
        winner = next(
            e
            for e in state.entries
            if e.effective and e.stub == entry.stub and e.param == entry.param
        )
        lost = [a for a in entry.addresses if a not in winner.addresses]
        lost_ids = [i for i in entry.ids if i not in winner.ids]
        same = [e for e in state.entries if e.stub == entry.stub and e.param == entry.param]
        if entry.param == "hide":
            merged = list(dict.fromkeys(a for e in same for a in e.addresses))
            fix = f"options {winner.module} hide={format_hide_list(merged)}"
            lost_text = ", ".join(str(a) for a in lost) or "nothing new"
        else:
            merged_ids = list(dict.fromkeys(i for e in same for i in e.ids))
            fix = f"options {winner.module} ids={','.join(merged_ids)}"
            lost_text = ", ".join(lost_ids) or "nothing new"
        result.append(
            persist_finding(
                "PP009",
                "duplicate-" + entry.param,
                "error" if (lost or lost_ids) else "warning",
                _where(entry.path, entry.line),
                f"{entry.param}= for {entry.stub.replace('_', '-')} is given again at "
                f"{_where(winner.path, winner.line)}; the kernel keeps only the last value, "
                f"so this one is lost at boot (not hidden: {lost_text})",
                remedy=f"merge them into one line: {fix}",
                path=entry.path,
                line=entry.line,
            )
        )
    return result


def _value_findings(state: PersistentState) -> list[Finding]:
    return [
        persist_finding(
            "PP010",
            "bad-" + e.param,
            "error",
            _where(e.path, e.line),
            f"{e.param}={e.value!r} cannot be parsed ({e.error}); the stub logs a parse error "
            "and hides nothing from it",
            remedy="write each address as (DDDD:BB:DD.F), e.g. hide=(0000:09:00.0)(0000:0a:04.1)"
            if e.param == "hide"
            else "write ids as vendor:device[,vendor:device], e.g. ids=8086:10d3",
            path=e.path,
            line=e.line,
        )
        for e in state.entries
        if e.error is not None
    ]


def _ordering_findings(state: PersistentState) -> list[Finding]:
    """kmod runs the first install of a module only, and none if it has a softdep."""
    result: list[Finding] = []
    installs: dict[str, OrderingEntry] = {}
    softdeps: dict[str, OrderingEntry] = {}
    for entry in state.ordering:
        key = module_key(entry.module)
        if entry.command == "install":
            if key in installs and entry.loads:
                first = installs[key]
                result.append(_shadowed(entry, first, "install command"))
            installs.setdefault(key, entry)
        elif entry.command == "softdep":
            if key in softdeps and entry.loads:
                first = softdeps[key]
                if not set(entry.loads) <= set(first.loads):
                    result.append(_shadowed(entry, first, "softdep"))
            softdeps.setdefault(key, entry)
    for key, install in installs.items():
        if install.loads and key in softdeps:
            soft = softdeps[key]
            if not set(install.loads) & set(soft.loads):
                result.append(
                    persist_finding(
                        "PP010",
                        "install-ignored-softdep",
                        "error",
                        _where(install.path, install.line),
                        f"kmod ignores this install command because {install.module} has a "
                        f"softdep at {_where(soft.path, soft.line)}, so the stub is not loaded "
                        "first",
                        remedy=f"add the stub to that softdep's pre: list "
                        f"(softdep {install.module} pre: {install.loads[0].replace('_', '-')})",
                        path=install.path,
                        line=install.line,
                    )
                )
    return result


def _shadowed(entry: OrderingEntry, first: OrderingEntry, what: str) -> Finding:
    return persist_finding(
        "PP010",
        "shadowed-" + entry.command,
        "error",
        _where(entry.path, entry.line),
        f"kmod uses only the first {what} of {entry.module} "
        f"({_where(first.path, first.line)}), so this one never runs",
        remedy="merge the two into the first one",
        path=entry.path,
        line=entry.line,
    )


def _platform_findings(state: PersistentState, platform: Platform) -> list[Finding]:
    result: list[Finding] = []
    pciback_exists = platform.stub_state("pciback") in (StubState.MODULE, StubState.BUILTIN)
    alias_ok = state.aliases.get("pciback") in ("xen_pciback",)
    release = platform.kernel_release or "this kernel"
    if platform.xen_stub == "xen-pciback" and not pciback_exists and not alias_ok:
        for entry in [e for e in state.entries if e.stub == "pciback"]:
            result.append(_rhel5_finding(entry.path, entry.line, release))
        for order in state.ordering:
            if order.command == "install" and "pciback" in order.loads:
                result.append(_rhel5_finding(order.path, order.line, release))
    if not platform.reads_modprobe_conf:
        for entry in state.entries:
            if entry.path == RHEL5_MODPROBE_FILE:
                result.append(
                    persist_finding(
                        "PP010",
                        "modprobe-conf-ignored",
                        "error",
                        _where(entry.path, entry.line),
                        "kmod does not read /etc/modprobe.conf, so this hides nothing at boot",
                        remedy=f"move the lines to {PCIPASS_MODPROBE_FILE} "
                        "(pcipass hide --persist writes them there)",
                        path=entry.path,
                        line=entry.line,
                    )
                )
    for entry in state.entries:
        if platform.stub_state(entry.stub) is StubState.BUILTIN:
            name = entry.stub.replace("_", "-")
            flag = "vfio-pci.ids" if entry.param == "ids" else f"{name}.hide"
            result.append(
                persist_finding(
                    "PP010",
                    "options-for-builtin",
                    "error",
                    _where(entry.path, entry.line),
                    f"{entry.stub.replace('_', '-')} is built into {release}; modprobe options "
                    "never reach a built-in module",
                    remedy=f"use the kernel command line ({flag}=...; pcipass hide --persist "
                    "--platform cmdline)",
                    path=entry.path,
                    line=entry.line,
                )
            )
    return result


def _rhel5_finding(path: str, line: int, release: str) -> Finding:
    return persist_finding(
        "PP010",
        "rhel5-form-on-xen-pciback",
        "error",
        _where(path, line),
        f"names the module pciback, which {release} does not have (it is xen-pciback): "
        "modprobe prints 'Module pciback not found', the host driver takes the device and "
        "still exits 0",
        remedy="add the line 'alias pciback xen-pciback' (pcipass hide --persist does this), "
        "or use options xen-pciback",
        path=path,
        line=line,
    )


# --------------------------------------------------------------------------
# kernel command lines
# --------------------------------------------------------------------------


def _unreadable(path: str, problem: str) -> Finding:
    return persist_finding(
        "PP010",
        "cmdline-unreadable",
        "warning",
        path,
        f"pcipass cannot follow this file ({problem}); the configured command line is unknown",
        remedy="simplify the assignment, or check the generated grub.cfg by hand",
        path=path,
    )


def _overridden_by_snippet(path: str, name: str, line: int | None) -> Finding:
    return persist_finding(
        "PP010",
        "cmdline-overridden",
        "warning",
        f"{path}:{line}",
        f"{name} is set again after /etc/default/grub, replacing what is there "
        "(including anything pcipass adds)",
        remedy=f'make it append instead: {name}="${name} ..."',
        path=path,
        line=line,
    )


def grub_findings(problems: Sequence[GrubProblem]) -> list[Finding]:
    """PP010 for what pcipass cannot follow in the grub files, and for a
    later file that replaces a GRUB_CMDLINE_* variable instead of appending."""
    return [
        _unreadable(p.path, p.problem)
        if p.overridden is None
        else _overridden_by_snippet(p.path, p.overridden, p.line)
        for p in problems
    ]


def cmdline_findings(hides: CmdlineHides) -> list[Finding]:
    """PP009 for a hiding parameter given twice; PP010 for a value the stub rejects."""
    result: list[Finding] = []
    for token in hides.tokens:
        if token.error is not None:
            result.append(
                persist_finding(
                    "PP010",
                    f"bad-{token.kind}",
                    "error",
                    token.where,
                    f"{token.param}={token.value!r} cannot be parsed ({token.error})",
                    remedy="write addresses as (DDDD:BB:DD.F)(...) and ids as vendor:device,...",
                )
            )
        if token.effective:
            continue
        winner = next(
            t for t in hides.tokens if t.effective and (t.stub, t.kind) == (token.stub, token.kind)
        )
        same = [t for t in hides.tokens if (t.stub, t.kind) == (token.stub, token.kind)]
        if token.kind == "hide":
            merged = format_hide_list(list(dict.fromkeys(a for t in same for a in t.addresses)))
        else:
            merged = ",".join(dict.fromkeys(i for t in same for i in t.ids))
        result.append(
            persist_finding(
                "PP009",
                f"duplicate-{token.kind}",
                "error",
                token.where,
                f"{token.param}= is given again later ({winner.where}); the kernel keeps only "
                "the last value, so this one is lost",
                remedy=f"merge them into one: {winner.param}={merged}",
            )
        )
    return result


def cross_findings(modprobe: PersistentState, configured: CmdlineHides) -> list[Finding]:
    """Both modprobe options and the command line set one stub's value.

    kmod appends the command line's options after the files' options
    (``kmod_config_new`` parses /proc/cmdline last), and the kernel keeps
    the last value: the command line wins and the modprobe value is lost.
    """
    result: list[Finding] = []
    for entry in modprobe.entries:
        if not entry.effective:
            continue
        for token in configured.tokens:
            if token.effective and (token.stub, token.kind) == (entry.stub, entry.param):
                result.append(
                    persist_finding(
                        "PP009",
                        f"cmdline-and-modprobe-{entry.param}",
                        "error",
                        f"{entry.path}:{entry.line}",
                        f"{entry.param}= for {entry.stub.replace('_', '-')} is also on the kernel "
                        f"command line ({token.where}); the command line value wins and this "
                        "one is lost",
                        remedy="keep the devices in one place",
                        path=entry.path,
                        line=entry.line,
                    )
                )
    return result


def configured_findings(problems: Sequence[GrubProblem], hides: CmdlineHides) -> list[Finding]:
    """Everything wrong with the configured command line (read_configured's
    result): what the grub files hide from pcipass, then the hide values."""
    return [*grub_findings(problems), *cmdline_findings(hides)]
