"""guard (PP003): save/restore/migrate refused while a guest holds a device,
from the ledger or its configuration; and the libvirt hook form, run the way
libvirt runs /etc/libvirt/hooks/qemu (arguments + domain XML on stdin)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pcipass
from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.cli.main import main
from pcipass.errors import PcipassError, RefusedError, UsageError
from pcipass.ops.attach import attach
from pcipass.ops.guard import guard, guard_libvirt_hook
from pcipass.ops.hide import hide_now
from pcipass.state.ledger import Ledger
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab

NIC = PciAddress.parse("0000:09:00.0")
SRC = str(Path(pcipass.__file__).resolve().parent.parent)

WIN10_WITH_HOSTDEV = """<domain type='kvm'>
  <name>win10</name>
  <memory unit='KiB'>4194304</memory>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
  </os>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source>
        <address domain='0x0000' bus='0x02' slot='0x10' function='0x0'/>
      </source>
    </hostdev>
  </devices>
</domain>
"""


def attached(lab: Lab) -> Lab:
    hide_now(lab.host, [NIC], Backend.PCIBACK)
    attach(lab.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    return lab


@pytest.mark.parametrize("operation", ["save", "restore", "migrate"])
def test_guest_holding_a_device_is_refused_with_pp003(rhel5: Lab, operation: str) -> None:
    attached(rhel5)
    before = snapshot(rhel5.base)
    with pytest.raises(RefusedError) as caught:
        guard(rhel5.host, "rhel5pv", operation)
    error = caught.value
    assert error.rule == "PP003" and int(error.exit_code) == 3
    assert "0000:09:00.0" in error.problem
    assert "not available for save, restore, or migration" in error.problem
    assert f"so {operation} is refused" in error.problem
    assert "pcipass detach --live 0000:09:00.0 rhel5pv" in error.remedy
    assert snapshot(rhel5.base) == before
    ledger = Ledger.open(rhel5.host.root, readonly=True)
    assert [(o.address, o.guest) for o in ledger.owners()] == [("0000:09:00.0", "rhel5pv")]
    ledger.close()


def test_quiet_for_a_guest_without_devices(rhel5: Lab) -> None:
    result = guard(rhel5.host, "rhel5pv", "migrate")
    assert result.allowed and "migrate is safe" in result.render()


def test_config_listing_a_device_counts_without_the_ledger(rhel5: Lab) -> None:
    rhel5.fake.write_file("/etc/xen/hand.cfg", 'name = "hand"\npci = [ "0a:04.1" ]\n')
    with pytest.raises(RefusedError) as caught:
        guard(rhel5.host, "hand", "save")
    assert "0000:0a:04.1" in caught.value.problem and "/etc/xen/hand.cfg" in caught.value.problem


def test_ledger_counts_without_a_config(rhel5: Lab) -> None:
    ledger = Ledger.open(rhel5.host.root)
    ledger.claim(NIC, "ghost", config_kind="xl")
    ledger.close()
    with pytest.raises(RefusedError, match="pcipass's ledger"):
        guard(rhel5.host, "ghost", "save")
    # A guest nobody knows: allowed, saying only the ledger was checked.
    result = guard(rhel5.host, "unknown", "save")
    assert any("only pcipass's ledger and running QEMU" in n for n in result.notes)


def test_detach_then_guard_allows_again(rhel5: Lab) -> None:
    from pcipass.ops.attach import detach

    attached(rhel5)
    detach(rhel5.host, NIC, "rhel5pv")
    assert guard(rhel5.host, "rhel5pv", "save").allowed


def test_unknown_operation_is_a_usage_error(rhel5: Lab) -> None:
    with pytest.raises(UsageError):
        guard(rhel5.host, "rhel5pv", "snapshot")


def test_cli_exit_codes(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    base = str(rhel5.base)
    assert main(["--root", base, "guard", "save", "rhel5pv"]) == 0
    attached(rhel5)
    assert main(["--root", base, "guard", "save", "rhel5pv"]) == 3
    assert "[PP003]" in capsys.readouterr().err
    assert main(["--root", base, "guard", "nonsense"]) == 2


def test_hook_function_judges_only_migrate_and_restore(kvm: Lab) -> None:
    xml = WIN10_WITH_HOSTDEV.encode()
    assert guard_libvirt_hook(kvm.host, ["win10", "start", "begin", "-"], xml) is None
    assert guard_libvirt_hook(kvm.host, ["win10", "stopped", "end", "-"], xml) is None
    for words in (["win10", "migrate", "begin", "-"], ["win10", "restore", "begin", "-"]):
        with pytest.raises(RefusedError, match="domain XML libvirt passed"):
            guard_libvirt_hook(kvm.host, words, xml)


def run_cli(
    args: list[str], stdin: str, argv0: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run(
        (argv0 or [sys.executable, "-m", "pcipass"]) + args,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_libvirt_hook_cli_refuses_migration_of_a_guest_with_a_hostdev(kvm: Lab) -> None:
    base = str(kvm.base)
    # Exactly as libvirt calls its hook: GUEST migrate begin -, XML on stdin.
    done = run_cli(
        ["--root", base, "guard", "--libvirt-hook", "win10", "migrate", "begin", "-"],
        WIN10_WITH_HOSTDEV,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""  # libvirt would read stdout as a replacement XML
    assert "[PP003]" in done.stderr and "0000:02:10.0" in done.stderr
    plain = (kvm.base / "etc/libvirt/qemu/win10.xml").read_text()
    done = run_cli(
        ["--root", base, "guard", "--libvirt-hook", "win10", "migrate", "begin", "-"], plain
    )
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    done = run_cli(
        ["--root", base, "guard", "--libvirt-hook", "win10", "prepare", "begin", "-"],
        WIN10_WITH_HOSTDEV,
    )
    assert (done.returncode, done.stdout) == (0, "")


def test_installed_hook_script_is_called_the_libvirt_way(kvm: Lab, tmp_path: Path) -> None:
    # /etc/libvirt/hooks/qemu as an administrator would install it.
    hook = tmp_path / "qemu"
    hook.write_text(
        "#!/bin/sh\n"
        f'exec "{sys.executable}" -m pcipass --root "{kvm.base}" guard --libvirt-hook "$@"\n'
    )
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    done = run_cli(["win10", "restore", "begin", "-"], WIN10_WITH_HOSTDEV, argv0=[str(hook)])
    assert done.returncode == 3 and done.stdout == ""
    assert "so restore is refused" in done.stderr
    done = run_cli(["win10", "started", "begin", "-"], WIN10_WITH_HOSTDEV, argv0=[str(hook)])
    assert done.returncode == 0 and done.stdout == ""


# --- check_guest and `pcipass guests` -------------------------------------------------


def test_check_guest_reports_drift_between_config_and_ledger(rhel5: Lab) -> None:
    from pcipass.ops.guard import check_guest
    from pcipass.ops.guests import find_guest

    attached(rhel5)
    # Hand edit: the NIC leaves the file, an absent device and a wildcard arrive.
    path = rhel5.host.root.path("/etc/xen/rhel5pv")
    text = path.read_text().replace("'0000:09:00.0'", "'0000:0b:00.0', '0000:0a:04.1'")
    path.write_text(text)
    result = check_guest(rhel5.host, find_guest(rhel5.host, "rhel5pv"))
    by_rule = {(f.rule, str(f.severity), f.subject) for f in result.findings}
    assert ("PP101", "warn", "0000:09:00.0") in by_rule  # owned, no longer listed
    assert ("PP002", "warn", "0000:0b:00.0") in by_rule  # not on this host
    assert ("PP002", "refuse", "0000:0a:04.1") in by_rule  # still on e1000
    assert ("PP101", "info", "0000:0a:04.1") in by_rule  # listed, not in the ledger
    assert ("PP004", "warn", "0000:0a:04.1") in by_rule


def test_guests_command_lists_and_checks(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    base = str(rhel5.base)
    rhel5.fake.write_file("/etc/xen/hand.cfg", 'name = "hand"\ntype = "hvm"\npci = [ "09:00.0" ]\n')
    rhel5.fake.write_file("/etc/xen/bad.cfg", "pci = [ 'x\n")
    assert main(["--root", base, "guests"]) == 0
    out, err = capsys.readouterr()
    assert "hand     xl    hvm" in out and "rhel5pv  xm    pv" in out
    assert "could not read: /etc/xen/bad.cfg" in err
    assert main(["--root", base, "guests", "--check"]) == 3
    out = capsys.readouterr().out
    assert "[PP002] refuse: 0000:09:00.0" in out and "[PP006] refuse" in out
    assert main(["--root", base, "guests", "rhel5pv"]) == 0
    assert "no findings" in capsys.readouterr().out


@pytest.mark.parametrize(
    "device",
    [
        "vfio-pci,host=02:10.0,rombar=0,id=pt0",
        "driver=vfio-pci,host=0000:02:10.0",
        "vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:02:10.0",
        '{"driver":"vfio-pci","host":"0000:02:10.0","id":"hostdev0","bus":"pci.0"}',
    ],
)
def test_a_running_qemu_with_vfio_counts_as_holding_the_device(kvm: Lab, device: str) -> None:
    argv = ["/usr/bin/qemu-system-x86_64", "-name", "guest=l2,debug-threads=on"]
    argv += ["-m", "192", "-device", device]
    kvm.fake.write_file("/proc/4242/cmdline", "\0".join(argv).encode() + b"\0")
    kvm.fake.write_file("/proc/4243/cmdline", b"/usr/bin/qemu-system-x86_64\0-name\0other\0")
    with pytest.raises(RefusedError) as caught:
        guard(kvm.host, "l2", "migrate")
    assert "0000:02:10.0" in caught.value.problem and "running QEMU" in caught.value.problem
    assert guard(kvm.host, "other", "migrate").allowed


def test_a_qemu_without_vfio_devices_is_allowed(kvm: Lab) -> None:
    argv = "/usr/bin/qemu-system-x86_64\0-name\0l2\0-device\0e1000,netdev=n0\0"
    kvm.fake.write_file("/proc/4242/cmdline", argv.encode())
    assert guard(kvm.host, "l2", "save").allowed


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    words=st.lists(
        st.sampled_from(["win10", "migrate", "restore", "begin", "-", "x" * 200, "a/b"]), max_size=4
    ),
    stdin=st.one_of(
        st.binary(max_size=200),
        st.sampled_from([WIN10_WITH_HOSTDEV.encode(), b"<domain/>", b"<!DOCTYPE x><domain/>"]),
    ),
    cmdline=st.lists(st.text(max_size=30), max_size=8),
)
def test_hook_never_fails_other_than_with_a_pcipass_error(
    kvm: Lab, words: list[str], stdin: bytes, cmdline: list[str]
) -> None:
    argv = ["/usr/bin/qemu-system-x86_64", "-name", "win10", *cmdline]
    kvm.fake.write_file(
        "/proc/777/cmdline", b"\0".join(a.encode("utf-8", "surrogatepass") for a in argv)
    )
    try:
        guard_libvirt_hook(kvm.host, words, stdin)
    except PcipassError as error:
        assert int(error.exit_code) in (2, 3, 4)
