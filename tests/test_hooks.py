"""guard-install: libvirt hooks and xl wrappers, run as the toolstacks run them."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.ops.hooks import wrapper_text
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def held(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> Lab:
    """rhel5pv holds 0000:09:00.0 (hidden, attached)."""
    rhel5.fake.mark_simulated()
    root = str(rhel5.base)
    assert main(["--root", root, "hide", "--now", "09:00.0"]) == 0
    assert main(["--root", root, "attach", "09:00.0", "rhel5pv", "--accept-pv-dma-risk"]) == 0
    capsys.readouterr()
    return rhel5


def env_for(lab: Lab) -> dict[str, str]:
    return {"PYTHONPATH": SRC, "PCIPASS_ROOT": str(lab.base), "PATH": os.environ["PATH"]}


def test_libvirt_hook_installed_and_run_as_libvirt_does(
    held: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(held.base)
    assert main(["--root", root, "guard-install", "--libvirt"]) == 0
    hook = held.base / "etc/libvirt/hooks/qemu"
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    xml = "<domain type='xen'><name>rhel5pv</name><os><type>linux</type></os></domain>"
    refused = subprocess.run(
        [str(hook), "rhel5pv", "migrate", "begin", "-"],
        input=xml,
        capture_output=True,
        text=True,
        env=env_for(held),
        check=False,
    )
    assert refused.returncode == 3
    assert refused.stdout == "" and "[PP003]" in refused.stderr
    started = subprocess.run(
        [str(hook), "rhel5pv", "start", "begin", "-"],
        input=xml,
        capture_output=True,
        text=True,
        env=env_for(held),
        check=False,
    )
    assert started.returncode == 0


def test_someone_elses_hook_is_never_replaced(
    held: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs = held.fake.write_file("/etc/libvirt/hooks/qemu", "#!/bin/sh\necho mine\n", 0o755)
    before = theirs.read_bytes()
    assert main(["--root", str(held.base), "guard-install", "--libvirt"]) == 0
    out = capsys.readouterr().out
    assert "exists and is not pcipass's: left as it is" in out
    assert theirs.read_bytes() == before
    assert (held.base / "etc/libvirt/hooks/qemu.d/pcipass").exists()
    # Uninstall removes only what pcipass wrote.
    assert main(["--root", str(held.base), "guard-install", "--uninstall"]) == 0
    assert theirs.read_bytes() == before
    assert not (held.base / "etc/libvirt/hooks/qemu.d/pcipass").exists()


def test_dry_run_shows_the_hook_and_writes_nothing(
    held: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(held.base)
    assert (
        main(["--root", str(held.base), "guard-install", "--libvirt", "--wrap", "xl", "--dry-run"])
        == 0
    )
    out = capsys.readouterr().out
    assert "+++ /etc/libvirt/hooks/qemu" in out and "+++ /usr/local/sbin/xl" in out
    assert snapshot(held.base) == before


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["save", "rhel5pv", "/tmp/x.save"], True),
        (["save", "-c", "rhel5pv", "/tmp/x.save"], True),
        (["migrate", "-s", "fakessh", "rhel5pv", "otherhost"], True),
        (["save", "otherguest", "/tmp/x.save"], False),
        (["info"], False),
    ],
)
def test_xl_wrapper_guards_save_and_migrate(
    held: Lab, tmp_path: Path, argv: list[str], refused: bool
) -> None:
    record = tmp_path / "called"
    real = tmp_path / "real-xl"
    # `xl list` is the wrapper's own question (domain ids); not recorded.
    real.write_text(f'#!/bin/sh\n[ "$1" = list ] && exit 0\necho "$@" > {record}\n')
    real.chmod(0o755)
    wrapper = tmp_path / "xl"
    wrapper.write_text(wrapper_text("xl", str(real)))
    wrapper.chmod(0o755)
    done = subprocess.run(
        [str(wrapper), *argv], capture_output=True, text=True, env=env_for(held), check=False
    )
    if refused:
        assert done.returncode == 3, done.stderr
        assert "[PP003]" in done.stderr
        assert not record.exists()
    else:
        assert done.returncode == 0, done.stderr
        assert record.read_text().split() == argv


def test_wrapper_finds_debians_versioned_xl(held: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    held.fake.write_file("/usr/lib/xen-4.17/bin/xl", "#!/bin/sh\n", 0o755)
    assert main(["--root", str(held.base), "guard-install", "--wrap", "xl"]) == 0
    wrapper = (held.base / "usr/local/sbin/xl").read_text()
    assert wrapper.rstrip().endswith('exec /usr/lib/xen-4.17/bin/xl "$@"')


def test_someone_elses_xl_wrapper_is_refused_and_kept(
    held: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs = held.fake.write_file("/usr/local/sbin/xl", '#!/bin/sh\nexec /opt/xl "$@"\n', 0o755)
    before = snapshot(held.base)
    assert main(["--root", str(held.base), "guard-install", "--wrap", "xl"]) == 2
    err = capsys.readouterr().err
    assert "/usr/local/sbin/xl: exists and is not pcipass's wrapper; not replaced" in err
    assert snapshot(held.base) == before
    assert theirs.read_text().startswith("#!/bin/sh\nexec /opt/xl")
