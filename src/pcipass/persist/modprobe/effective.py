"""The whole modprobe configuration as kmod applies it, for the next-boot forecast.

Read with pcipass's own parser (syntax.py: kmod's line model) in kmod's file
order (installed.kmod_file_order), into the plain
:class:`~pcipass.host.boot_facts.ModuleConfig` that policy/forecast.py
decides from.  :func:`showconfig` prints it the way ``modprobe -c`` does, so
the tests hold it against real kmod on the same tree.
"""

from __future__ import annotations

from collections.abc import Mapping

from pcipass.host.boot_facts import ModuleConfig, Sourced, module_key
from pcipass.persist.modprobe.installed import kmod_file_order
from pcipass.persist.modprobe.syntax import Document


def read_module_config(files: Mapping[str, bytes], *, label: str = "") -> ModuleConfig:
    """``files``: host path -> bytes (collect_modprobe_files, or an initramfs's).
    ``label`` prefixes every source (``initramfs:``)."""
    order, _ignored = kmod_file_order(files)
    config = ModuleConfig(files=tuple(label + p for p in order))
    for path in order:
        for directive in Document.parse(files[path]).directives:
            where = f"{label}{path}:{directive.line.first_line}"
            key = directive.key
            if directive.command == "options":
                text = directive.line.text
                for param in directive.params():
                    value = text[param.value_start : param.value_end]
                    config.options.append((key, param.key, Sourced(value, where)))
            elif directive.command == "install":
                command = Sourced(directive.rest.strip(), where)
                config.install.setdefault(key, command)  # kmod uses the first
                config.install_lines.append((key, command))
            elif directive.command == "softdep":
                words = directive.rest.split()
                pre: list[str] = []
                kind = (
                    ""  # kmod (kmod_config_add_softdep): names before pre:/post: count for nothing
                )
                for word in words:
                    if word in ("pre:", "post:"):
                        kind = word
                    elif kind == "pre:":
                        pre.append(module_key(word))
                config.softdep_pre.setdefault(key, (tuple(pre), where))  # the first
                config.softdep_lines.append((key, tuple(pre), where))
            elif directive.command == "blacklist":
                config.blacklist.setdefault(key, where)
            elif directive.command == "alias":
                config.alias.setdefault(key, Sourced(module_key(directive.target), where))
    return config


def showconfig(config: ModuleConfig) -> list[str]:
    """The configuration lines of ``modprobe -c`` (kmod 30's order: blacklist, install,
    alias, options, softdep), for the modules this configuration names."""
    lines = [f"blacklist {m}" for m in config.blacklist]
    lines += [f"install {m} {v.value}" for m, v in config.install_lines]
    lines += [f"alias {name} {target.value}" for name, target in config.alias.items()]
    lines += [f"options {m} {p}={v.value}" for m, p, v in config.options]
    lines += [f"softdep {m} pre: {' '.join(pre)}" for m, pre, _ in config.softdep_lines]
    return lines
