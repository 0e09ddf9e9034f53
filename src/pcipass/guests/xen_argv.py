"""Which guest an ``xl``/``xm`` command line saves, restores or migrates.

The guard's wrappers (``/usr/local/sbin/xl`` and ``xm``) hand pcipass the
whole command line; this module reads it with each program's own grammar,
so that an option's value is never taken for the guest and an option
before the subcommand does not hide it.  Anything it cannot read exactly is
reported as *unidentified* with the reason: the guard then fails closed.

xl (xl(1), tools/xl/xl.c and xl_cmdtable.c): global options come before the
subcommand and take no value: ``-v`` (repeatable), ``-N`` (dry run), ``-f``,
``-t``, ``-T``, ``-A``; they may be combined (``-vvN``).  Each subcommand then
reads its options with getopt_long, which also accepts them after the
positional arguments and stops at ``--``:

* ``save [-c] [-p] [-D] DOMAIN CHECKPOINTFILE [CONFIGFILE]``
* ``migrate [-F] [-e] [-p] [-D] [-s SSHCOMMAND] [-C CONFIG] [--debug]
  [--live] DOMAIN HOST``
* ``remus [-F] [-b] [-u] [-n] [-d] [-e] [-c] [-i MS] [-s SSHCOMMAND]
  [-N NETBUFSCRIPT] DOMAIN [HOST]`` (a continuous migration)
* ``restore [-F] [-p] [-e] [-d] [-V] [-A] [-c] [CONFIGFILE] CHECKPOINTFILE``

xm (Xen 3.x tools/python/xen/xm/main.py and migrate.py), no global options;
Python's ``getopt.gnu_getopt`` (options anywhere, long options with
``--name=value`` or ``--name value``):

* ``save [-c|--checkpoint] DOMAIN FILE``; ``restore [-p|--paused] FILE``
* ``migrate [-l|--live] [-r|--resource MBIT] [-p|--port PORT]
  [-n|--node NODE] [-s|--ssl] [-c|--change_home_server] DOMAIN HOST``
* ``suspend DOMAIN`` and ``resume DOMAIN``: xend's managed save and restore.

A DOMAIN made of digits is a domain id (libxl_domain_qualifier_to_domid,
and xm's the same); :func:`domain_names` reads ``xl list``/``xm list``
output to turn it into a name.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.record import dataclass

XL_GLOBAL_FLAGS = frozenset("vNftTA")


@dataclass(frozen=True)
class _Grammar:
    operation: str  # the guard's operation: save, restore or migrate
    flags: str  # short options without a value
    valued: str = ""  # short options that take a value
    long_flags: frozenset[str] = frozenset({"help"})
    long_valued: frozenset[str] = frozenset()


XL_COMMANDS = {
    "save": _Grammar("save", "hcpD"),
    "migrate": _Grammar("migrate", "hFepD", "Cs", frozenset({"help", "debug", "live"})),
    "remus": _Grammar("migrate", "hFbundec", "isN"),
    "restore": _Grammar(
        "restore", "hFcpdeVA", "", frozenset({"help", "vncviewer", "vncviewer-autopass"})
    ),
}
XM_COMMANDS = {
    "save": _Grammar("save", "hc", "", frozenset({"help", "checkpoint"})),
    "restore": _Grammar("restore", "hp", "", frozenset({"help", "paused"})),
    "migrate": _Grammar(
        "migrate",
        "hlsc",
        "rpn",
        frozenset({"help", "live", "ssl", "change_home_server"}),
        frozenset({"resource", "port", "node"}),
    ),
    "suspend": _Grammar("save", "h"),
    "resume": _Grammar("restore", "h"),
}
# Words the shell wrapper looks for before it asks pcipass at all.
GUARDED_WORDS = tuple(sorted(set(XL_COMMANDS) | set(XM_COMMANDS)))


@dataclass(frozen=True)
class WrappedCall:
    """What a wrapped command line does, as far as the guard is concerned.

    ``operation`` is None for a command the guard does not judge.  Else
    ``domain`` (a name or a domain id as written) or ``config_file`` (xl
    restore's CONFIGFILE, which names the guest) says whose state moves,
    or ``unidentified`` says why that cannot be told.
    """

    tool: str
    operation: str | None = None
    command: str = ""
    domain: str | None = None
    config_file: str | None = None
    unidentified: str | None = None


class _Unreadable(Exception):
    pass


def _long_option(word: str, grammar: _Grammar) -> tuple[str, bool]:
    """(name, takes a value) of ``--name[=value]``; getopt accepts any
    unambiguous prefix of a long option's name."""
    name = word[2:].split("=", 1)[0]
    known = grammar.long_flags | grammar.long_valued
    matches = [k for k in known if k == name] or [k for k in known if k.startswith(name)]
    if len(matches) != 1:
        raise _Unreadable(f"{word.split('=', 1)[0]} is not an option pcipass knows here")
    full = matches[0]
    if full in grammar.long_flags and "=" in word:
        raise _Unreadable(f"--{full} takes no value")
    return full, full in grammar.long_valued


def _positionals(words: Sequence[str], grammar: _Grammar) -> list[str]:
    """The non-option words, options read the getopt way (anywhere, ``--``
    ends them, ``-abc`` combined, ``-sVALUE`` or ``-s VALUE``)."""
    positional: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            positional += words[index:]
            break
        if word.startswith("--"):
            _name, valued = _long_option(word, grammar)
            if valued and "=" not in word:
                if index >= len(words):
                    raise _Unreadable(f"{word} needs a value")
                index += 1
            continue
        if word.startswith("-") and word != "-":
            for position, letter in enumerate(word[1:], start=1):
                if letter in grammar.flags:
                    continue
                if letter in grammar.valued:
                    if position == len(word) - 1:  # the value is the next word
                        if index >= len(words):
                            raise _Unreadable(f"-{letter} needs a value")
                        index += 1
                    break
                raise _Unreadable(f"-{letter} is not an option pcipass knows here")
            continue
        positional.append(word)
    return positional


def _subcommand_words(tool: str, argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The subcommand and its words, after xl's global options."""
    index = 0
    if tool == "xl":
        while index < len(argv) and argv[index].startswith("-") and argv[index] != "-":
            word = argv[index]
            index += 1
            if word == "--":
                break
            unknown = [c for c in word[1:] if c not in XL_GLOBAL_FLAGS]
            if word.startswith("--") or unknown:
                raise _Unreadable(f"{word} is not a global option of xl pcipass knows")
    if index >= len(argv):
        return None, []
    return argv[index], list(argv[index + 1 :])


def identify(tool: str, argv: Sequence[str]) -> WrappedCall:
    """Read ``tool``'s command line ``argv`` (without the program name)."""
    commands = XL_COMMANDS if tool == "xl" else XM_COMMANDS
    try:
        command, words = _subcommand_words(tool, argv)
    except _Unreadable as problem:
        # The options before the subcommand are unknown: so is the subcommand.
        if any(w in commands for w in argv):
            guarded = next(commands[w].operation for w in argv if w in commands)
            return WrappedCall(tool, guarded, unidentified=str(problem))
        return WrappedCall(tool)
    if command is None or command not in commands:
        return WrappedCall(tool)
    grammar = commands[command]
    call = WrappedCall(tool, grammar.operation, command)
    try:
        positional = _positionals(words, grammar)
    except _Unreadable as problem:
        return _with(call, unidentified=str(problem))
    if grammar.operation == "restore" and command != "resume":
        # xl restore [CONFIGFILE] CHECKPOINTFILE; xm restore FILE.
        if tool == "xl" and len(positional) == 2:
            return _with(call, config_file=positional[0])
        return _with(
            call,
            unidentified="the guest is inside the saved file, which pcipass does not read",
        )
    if not positional:
        return _with(call, unidentified="no domain named")
    return _with(call, domain=positional[0])


def _with(call: WrappedCall, **changes: str) -> WrappedCall:
    return WrappedCall(
        call.tool,
        call.operation,
        call.command,
        changes.get("domain"),
        changes.get("config_file"),
        changes.get("unidentified"),
    )


def domain_names(listing: str) -> dict[str, str]:
    """Domain id -> name from ``xl list`` / ``xm list`` output.

    The columns are ``Name ID Mem VCPUs State Time(s)``; the name is read as
    everything before the last five columns, so a name with spaces stays
    whole.
    """
    names: dict[str, str] = {}
    for line in listing.splitlines():
        parts = line.rsplit(None, 5)
        if len(parts) == 6 and parts[1].isdigit():
            names[parts[1]] = parts[0].strip()
    return names
