"""``modprobe`` and ``modprobe -r`` for the simulated kernel, reading the tree's configuration.

What the simulated runner does when pcipass (or a test) runs modprobe on a simulated
host, as kmod / RHEL 5's module-init-tools do (modprobe.d(5), modprobe.conf(5)):

* ``modprobe -r M...``: each module is unloaded; its driver's ``remove``
  runs for every function it drives (they end up unbound), its sysfs
  directory goes, it leaves ``/proc/modules``.  A module not loaded or built
  in fails as modprobe does ("is not currently loaded", "is builtin").
* ``modprobe M [p=v...]``: a loaded module is left alone (parameters are read
  only at load: a loaded pciback does not see a new ``hide=``); otherwise an
  ``install M ...`` command runs instead (its ``modprobe`` invocations only;
  ``--ignore-install`` loads M itself), ``softdep M pre:`` modules load first,
  ``options M`` parameters join the command line's, ``alias`` names resolve;
  loading probes every unbound function (driver_override, pciback's
  ``hide=`` slots and vfio-pci's ``ids=`` respected by the kernel's matching).

The configuration is parsed here independently of pcipass's own reader
(persist/modprobe), so a test of what pcipass writes is not checked by the
same code that wrote it.
"""

from __future__ import annotations

import errno
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from pcipass.record import dataclass, field
from pcipass.runner import CommandResult

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipass.simkernel.kernel import SimKernel
    from pcipass.simkernel.tree import SimDriver


def _canon(name: str) -> str:
    return name.replace("_", "-")


@dataclass
class ModprobeConfig:
    """The directives of /etc/modprobe.conf and /etc/modprobe.d/*.conf that matter here."""

    options: dict[str, dict[str, str]] = field(default_factory=dict)
    install: dict[str, str] = field(default_factory=dict)
    softdep_pre: dict[str, list[str]] = field(default_factory=dict)
    alias: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, base: Path) -> ModprobeConfig:
        files = [base / "etc/modprobe.conf"]
        directory = base / "etc/modprobe.d"
        if directory.is_dir():
            files += sorted(p for p in directory.iterdir() if p.name.endswith(".conf"))
        config = cls()
        for path in files:
            if path.is_file():
                config._parse(path.read_text(errors="replace"))
        return config

    def _parse(self, text: str) -> None:
        for raw in text.replace("\\\n", " ").splitlines():
            line = raw.split("#", 1)[0].strip()
            words = line.split()
            if len(words) < 2:
                continue
            keyword, module = words[0], _canon(words[1])
            if keyword == "options":
                params = self.options.setdefault(module, {})
                for word in words[2:]:
                    key, _, value = word.partition("=")
                    params[key] = value
            elif keyword == "install":
                self.install[module] = line.split(None, 2)[2] if len(words) > 2 else ""
            elif keyword == "softdep":
                pre = self.softdep_pre.setdefault(module, [])
                kind = ""
                for word in words[2:]:
                    if word.endswith(":"):
                        kind = word
                    elif kind == "pre:":
                        pre.append(_canon(word))
            elif keyword == "alias" and len(words) > 2:
                self.alias[module] = _canon(words[2])


def _spec(kernel: SimKernel, module: str) -> SimDriver | None:
    return kernel.known_module(module)


def _fails(kernel: SimKernel, action: str, module: str) -> None:
    """A failure the test asked for (:meth:`SimKernel.fail_module`)."""
    for index, (what, name, err) in enumerate(kernel.module_failures):
        if what == action and name == _canon(module):
            del kernel.module_failures[index]
            raise OSError(err, f"could not {action} {module}: {os.strerror(err)}")


def module_loaded(kernel: SimKernel, module: str) -> bool:
    spec = _spec(kernel, module)
    return spec is not None and kernel.host.driver_dir(spec.name).exists()


def load_module(kernel: SimKernel, module: str, params: Mapping[str, str]) -> None:
    """The module's init: register the driver, take its parameters, probe."""
    spec = _spec(kernel, module)
    if spec is None:
        raise OSError(errno.ENOENT, f"Module {module} not found")
    _fails(kernel, "load", spec.module)
    host = kernel.host
    if not host.driver_dir(spec.name).exists():
        host.add_driver(spec.module)
    hide = params.get("hide")
    if spec.name == "pciback" and hide:
        from pcipass.address import parse_hide_list

        for address in parse_hide_list(hide):
            if str(address) in host._paths:
                kernel.pciback_slots.add(str(address))
        kernel._write_slots()
    ids = params.get("ids")
    if spec.name == "vfio-pci" and ids:
        # vfio-pci's ids= (vendor:device[:subvendor:subdevice], comma separated)
        # is read at load only: kept per load, dropped at unload.
        kernel.module_ids[spec.name] = {
            (int(i.split(":")[0], 16), int(i.split(":")[1], 16)) for i in ids.split(",") if i
        }
    for name in list(host._paths):
        if name not in kernel.probe_failures:  # e.g. missing firmware: the probe fails, unbound
            kernel._probe(name)


def unload_module(kernel: SimKernel, module: str) -> None:
    """``modprobe -r``: the driver's remove() runs for every function it drives."""
    import shutil  # only when the simulated kernel removes a tree

    spec = _spec(kernel, module)
    host = kernel.host
    if spec is None or not host.driver_dir(spec.name).exists():
        raise OSError(errno.ENOENT, f"Module {module} is not currently loaded")
    mod = spec.module.replace("-", "_")
    modules = (host.base / "proc/modules").read_text().splitlines(keepends=True)
    if not any(line.split()[:1] == [mod] for line in modules):
        raise OSError(errno.EPERM, f"Module {module} is builtin")
    _fails(kernel, "unload", spec.module)
    for name in list(host._paths):
        if host.bound_driver(name) == spec.name:
            host.unbind(name)
    if spec.name == "pciback":
        kernel.pciback_slots.clear()  # the slot list is the module's memory
        kernel._write_slots()
    kernel.module_ids.pop(spec.name, None)
    shutil.rmtree(host.driver_dir(spec.name))
    shutil.rmtree(host.sys / "module" / mod, ignore_errors=True)
    (host.base / "proc/modules").write_text(
        "".join(line for line in modules if line.split()[:1] != [mod])
    )


def load(
    kernel: SimKernel,
    module: str,
    params: dict[str, str],
    config: ModprobeConfig,
    *,
    ignore_install: bool = False,
    depth: int = 0,
) -> None:
    if depth > 8:
        raise OSError(errno.ELOOP, "install/softdep loop")
    module = config.alias.get(_canon(module), _canon(module))
    if module_loaded(kernel, module):
        return  # modprobe: already loaded, parameters are not applied again
    command = config.install.get(module)
    if command is not None and not ignore_install:
        for part in command.split(";"):
            words = shlex.split(part)
            if not words or os.path.basename(words[0]) != "modprobe":
                continue
            names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            if names:
                load(
                    kernel,
                    names[0],
                    dict(w.split("=", 1) for w in words[1:] if "=" in w and not w.startswith("-")),
                    config,
                    ignore_install="--ignore-install" in words or "-i" in words,
                    depth=depth + 1,
                )
        return
    for pre in config.softdep_pre.get(module, []):
        load(kernel, pre, {}, config, depth=depth + 1)
    merged = dict(config.options.get(module, {}))
    merged.update(params)
    kernel.load_module(module, merged)


def run_modprobe(kernel: SimKernel, args: Sequence[str]) -> CommandResult:
    """Answer one ``modprobe`` command line (``args[0]`` is the program)."""
    argv = tuple(args)
    flags = [a for a in argv[1:] if a.startswith("-")]
    names = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
    params = dict(a.split("=", 1) for a in argv[1:] if "=" in a and not a.startswith("-"))
    config = ModprobeConfig.read(kernel.host.base)
    try:
        if "-r" in flags or "--remove" in flags:
            for name in names:
                kernel.unload_module(config.alias.get(_canon(name), _canon(name)))
        else:
            for name in names[:1]:
                load(
                    kernel,
                    name,
                    params,
                    config,
                    ignore_install="--ignore-install" in flags or "-i" in flags,
                )
    except OSError as error:
        return CommandResult(argv, 1, "", f"modprobe: FATAL: {error.strerror}\n")
    return CommandResult(argv, 0, "", "")
