"""A guest name that a toolstack's command line would read as an option never reaches it."""

from __future__ import annotations

import pytest

from pcipass.address import PciAddress
from pcipass.errors import UsageError
from pcipass.guests.toolstack import Virsh, XenCli
from pcipass.testing.harness import Lab


@pytest.mark.parametrize("name", ["-x", "--help", "-f/etc/passwd"])
def test_xl_xm_and_virsh_refuse_a_name_read_as_an_option(rhel5: Lab, name: str) -> None:
    before = list(rhel5.runner.calls)
    for make in (
        lambda: XenCli(rhel5.host, "xl", name),
        lambda: XenCli(rhel5.host, "xm", name),
        lambda: Virsh(rhel5.host, "xen:///system", name, xen=True),
    ):
        with pytest.raises(UsageError, match="would be read as an option"):
            make()
    assert rhel5.runner.calls == before  # no program ran


def test_ordinary_names_with_dashes_inside_are_operands(rhel5: Lab) -> None:
    cli = XenCli(rhel5.host, "xl", "web-1")
    assert cli.describe(PciAddress.parse("09:00.0"), "attach") == [
        "xl",
        "pci-attach",
        "web-1",
        "0000:09:00.0",
    ]
