"""Build ``pcipass.1`` from the argparse definitions, so the manual cannot drift from the CLI.

argparse-manpage (PyPI, packaged by Debian as python3-argparse-manpage) renders every command and
option from :func:`pcipass.cli.main.build_parser`.  The sections argparse does not know are made
here from their own single sources: EXIT STATUS from the table in docs/cli.md, RULES from
:data:`pcipass.policy.rules.RULES`, ENVIRONMENT and FILES from this file.

Usage: ``python3 packaging/build_manpage.py [--output dist/pcipass.1]``
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

FILES = (
    (
        "/var/lib/pcipass/state.db",
        "the ledger: hidden devices, owners, hotplug events, the journal",
    ),
    ("/etc/modprobe.conf", "RHEL 5: the document's install and options pciback lines"),
    ("/etc/modprobe.d/pcipass.conf", "today's persistent hiding (options, softdep)"),
    ("/etc/libvirt/hooks/qemu, /etc/libvirt/hooks/libxl", "the guard as a libvirt hook"),
    ("/usr/local/sbin/xl, /usr/local/sbin/xm", "the guard as xl/xm wrappers"),
)


def roff(text: str) -> str:
    """Text for a roff line: backslashes and minus signs escaped, no control character first."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def exit_codes(cli_md: str) -> list[tuple[str, str]]:
    """The ``| code | meaning |`` rows under ``## Exit codes`` in docs/cli.md."""
    section = cli_md.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| (\d+) \| (.+?) \|$", section, flags=re.MULTILINE)


def markdown_to_text(text: str) -> str:
    return text.replace("`", "")


def include_text() -> str:
    sys.path.insert(0, str(HERE / "src"))
    from pcipass.policy.rules import RULES

    lines = ["[EXIT STATUS]"]
    for code, meaning in exit_codes((HERE / "docs" / "cli.md").read_text()):
        lines += [".TP", f"\\fB{code}\\fR", roff(markdown_to_text(meaning))]
    lines += [
        "",
        "[RULES]",
        "Every refusal and warning names a rule; ids are stable (docs/rules.md).",
    ]
    for rule in RULES.values():
        lines += [".TP", f"\\fB{rule.id}\\fR {roff(rule.name)}", roff(rule.summary)]
    lines += [
        "",
        "[ENVIRONMENT]",
        ".TP",
        "\\fBPCIPASS_ROOT\\fR",
        roff("the default of --root (hooks and wrappers get no --root option)."),
        "",
        "[FILES]",
    ]
    for path, meaning in FILES:
        lines += [".TP", f"\\fI{roff(path)}\\fR", roff(meaning)]
    return "\n".join(lines) + "\n"


def build(output: Path) -> Path:
    sys.path.insert(0, str(HERE / "src"))
    from pcipass import __version__

    output.parent.mkdir(parents=True, exist_ok=True)
    tool = Path(sys.executable).parent / "argparse-manpage"
    with tempfile.NamedTemporaryFile("w", suffix=".include", delete=False) as extra:
        extra.write(include_text())
    try:
        subprocess.run(
            [
                str(tool),
                "--pyfile",
                str(HERE / "src" / "pcipass" / "cli" / "main.py"),
                "--function",
                "build_parser",
                "--prog",
                "pcipass",
                "--project-name",
                "pcipass",
                "--version",
                __version__,
                "--description",
                "give virtual machines exclusive, safe use of host PCI devices",
                "--manual-title",
                "pcipass manual",
                "--include",
                extra.name,
                "--output",
                str(output),
            ],
            check=True,
            env={
                "PYTHONPATH": str(HERE / "src"),
                "SOURCE_DATE_EPOCH": "0",
                "PATH": "/usr/bin:/bin",
            },
        )
    finally:
        Path(extra.name).unlink()
    return output


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "dist" / "pcipass.1")
    args = parser.parse_args(argv)
    print(build(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
