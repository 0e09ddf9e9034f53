"""Build bash and zsh completion for pcipass from the argparse definitions (with shtab).

Commands and options come from :func:`pcipass.cli.main.build_parser`, so completion cannot drift
from the CLI.  Arguments named BDF complete to the PCI addresses of the host (or of the tree given
with ``--root`` / ``PCIPASS_ROOT``) and its pinned names (``@NAME``: the ledger read with the
``sqlite3`` program when installed, and the desired state's ``[device.NAME]`` tables), GUEST to
the guest names of its xl/xm and libvirt configurations.  Those helpers are a few lines of shell
reading the tree directly: a completion call costs no Python start-up at all.

Usage: ``python3 packaging/build_completion.py [--output-dir dist]``
writes ``pcipass.bash`` (for /usr/share/bash-completion/completions/pcipass) and ``_pcipass``
(for a directory on zsh's $fpath).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

# The root the command line names: --root DIR, --root=DIR, else $PCIPASS_ROOT, else /.
BASH_PREAMBLE = r"""
_pcipass_root() {
  local i
  for ((i = 1; i < ${#COMP_WORDS[@]}; i++)); do
    case ${COMP_WORDS[i]} in
      --root) printf '%s' "${COMP_WORDS[i + 1]}"; return ;;
      --root=*) printf '%s' "${COMP_WORDS[i]#--root=}"; return ;;
    esac
  done
  printf '%s' "${PCIPASS_ROOT:-}"
}
_pcipass_pins() {
  # Pinned names, as @NAME: from the ledger when the sqlite3 program is there, and the
  # [device.NAME] tables of the desired state (a plain file: no program needed).
  local root=$1
  if command -v sqlite3 >/dev/null 2>&1 && [ -r "$root/var/lib/pcipass/state.db" ]; then
    sqlite3 -readonly "$root/var/lib/pcipass/state.db" 'SELECT name FROM pins' 2>/dev/null
  fi
  sed -n 's/^[[:space:]]*\[device\.\([A-Za-z0-9_-]*\)\][[:space:]]*$/\1/p' \
    "$root/etc/pcipass/pcipass.toml" 2>/dev/null
}
_pcipass_addresses() {
  local root devices pins
  root=$(_pcipass_root)
  devices=$(cd "${root%/}/sys/bus/pci/devices" 2>/dev/null && printf '%s\n' [0-9a-f]*:*)
  pins=$(_pcipass_pins "${root%/}" | sort -u | sed 's/^/@/')
  compgen -W "$devices $pins" -- "$1"
}
_pcipass_guests() {
  local root names
  root=$(_pcipass_root)
  root=${root%/}
  names=$(
    sed -n "s/^name[[:space:]]*=[[:space:]]*[\"']\([^\"']*\)[\"'].*/\1/p" \
      "$root"/etc/xen/*.cfg "$root"/etc/xen/auto/* "$root"/etc/xen/*[!~] 2>/dev/null
    sed -n 's:.*<name>\([^<]*\)</name>.*:\1:p' \
      "$root"/etc/libvirt/qemu/*.xml "$root"/etc/libvirt/libxl/*.xml 2>/dev/null
  )
  local IFS=$'\n'
  compgen -W "$(printf '%s\n' "$names" | sort -u)" -- "$1"
}
"""

ZSH_PREAMBLE = r"""
_pcipass_root() {
  local i
  for ((i = 1; i <= ${#words}; i++)); do
    case ${words[i]} in
      --root) print -r -- "${words[i + 1]}"; return ;;
      --root=*) print -r -- "${words[i]#--root=}"; return ;;
    esac
  done
  print -r -- "${PCIPASS_ROOT:-}"
}
_pcipass_addresses() {
  local root=$(_pcipass_root)
  local -a devices pins
  devices=(${root%/}/sys/bus/pci/devices/[0-9a-f]*:*(N:t))
  pins=(${(f)"$(
    if (( $+commands[sqlite3] )) && [[ -r ${root%/}/var/lib/pcipass/state.db ]]; then
      sqlite3 -readonly ${root%/}/var/lib/pcipass/state.db 'SELECT name FROM pins' 2>/dev/null
    fi
    sed -n 's/^[[:space:]]*\[device\.\([A-Za-z0-9_-]*\)\][[:space:]]*$/\1/p' \
      ${root%/}/etc/pcipass/pcipass.toml(N) 2>/dev/null
  )"})
  compadd -a devices
  (( ${#pins} )) && compadd -P @ -a pins
}
_pcipass_guests() {
  local root=$(_pcipass_root)
  root=${root%/}
  local -a names
  names=(${(f)"$(
    sed -n "s/^name[[:space:]]*=[[:space:]]*[\"']\([^\"']*\)[\"'].*/\1/p" \
      $root/etc/xen/*.cfg(N) $root/etc/xen/auto/*(N) 2>/dev/null
    sed -n 's:.*<name>\([^<]*\)</name>.*:\1:p' \
      $root/etc/libvirt/qemu/*.xml(N) $root/etc/libvirt/libxl/*.xml(N) 2>/dev/null
  )"})
  compadd -a names
}
"""

ADDRESSES = {"bash": "_pcipass_addresses", "zsh": "_pcipass_addresses"}
GUESTS = {"bash": "_pcipass_guests", "zsh": "_pcipass_guests"}


def annotated_parser() -> argparse.ArgumentParser:
    """pcipass's own parser, each argument told how its values complete."""
    sys.path.insert(0, str(HERE / "src"))
    import shtab

    from pcipass.cli.main import build_parser

    parser = build_parser()
    pending = [parser]
    while pending:
        current = pending.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
                continue
            metavar = action.metavar if isinstance(action.metavar, str) else ""
            if metavar == "BDF":
                action.complete = ADDRESSES  # type: ignore[attr-defined]
            elif metavar == "GUEST":
                action.complete = GUESTS  # type: ignore[attr-defined]
            elif metavar == "DIR":
                action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
            elif metavar in ("FILE", "PATH"):
                action.complete = shtab.FILE  # type: ignore[attr-defined]
    return parser


def scripts() -> dict[str, str]:
    import shtab

    parser = annotated_parser()
    return {
        "pcipass.bash": shtab.complete(parser, shell="bash", preamble=BASH_PREAMBLE),  # noqa: S604
        "_pcipass": shtab.complete(parser, shell="zsh", preamble=ZSH_PREAMBLE),  # noqa: S604
    }


def main(argv: list[str]) -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--output-dir", type=Path, default=HERE / "dist")
    args = options.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in scripts().items():
        (args.output_dir / name).write_text(text)
        print(args.output_dir / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
