"""Build ``dist/pcipass.pyz``: pcipass as one file that the host's own python3 runs.

An administrator copies one file to a dom0 or a KVM host and runs ``python3 pcipass.pyz list``:
no install, no network, standard library only (pcipass has no runtime dependency).  The archive
is reproducible: members sorted, fixed timestamps, no ``__pycache__``, so two builds of one commit
are byte-identical and the file can be checked against a published digest.

Usage: ``python3 packaging/build_zipapp.py [--output dist/pcipass.pyz]``
"""

from __future__ import annotations

import argparse
import stat
import sys
import zipfile
from pathlib import Path

SHEBANG = b"#!/usr/bin/env python3\n"
# 1980-01-01, the earliest time a zip entry can hold: the same bytes at every build.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
MAIN = (
    "# pcipass as one file: python3 pcipass.pyz COMMAND ...\n"
    "import sys\n"
    "if sys.version_info < (3, 9):\n"
    "    sys.exit('pcipass needs Python 3.9 or newer, this is ' + sys.version.split()[0])\n"
    "from pcipass.cli.main import run\n"
    "run()\n"
)


def package_files(package_dir: Path) -> list[Path]:
    """Every source and data file of the package, sorted, without caches."""
    return sorted(
        path
        for path in package_dir.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    archive.writestr(info, data)


def build(source_root: Path, output: Path) -> Path:
    package_dir = source_root / "pcipass"
    if not (package_dir / "__init__.py").is_file():
        raise SystemExit(f"build_zipapp: no package at {package_dir}")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with partial.open("wb") as handle:
        handle.write(SHEBANG)
        with zipfile.ZipFile(handle, "w") as archive:
            _add(archive, "__main__.py", MAIN.encode())
            for path in package_files(package_dir):
                _add(archive, path.relative_to(source_root).as_posix(), path.read_bytes())
    partial.chmod(0o755)
    partial.replace(output)
    return output


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent.parent
    parser.add_argument("--source", type=Path, default=here / "src")
    parser.add_argument("--output", type=Path, default=here / "dist" / "pcipass.pyz")
    args = parser.parse_args(argv)
    built = build(args.source, args.output)
    print(f"{built} ({built.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
