"""The pci.ids subset the example hosts write (names from the public PCI ID repository)."""

from __future__ import annotations

PCI_IDS = """\
# pci.ids subset written by pcipass's example host (ids from the public PCI ID repository)
1002  Advanced Micro Devices, Inc. [AMD/ATI]
\t67df  Ellesmere [Radeon RX 470/480/570/570X/580/580X/590]
\taaf0  Ellesmere HDMI Audio [Radeon RX 470/480 / 570/580/590]
102b  Matrox Electronics Systems Ltd.
\t0522  MGA G200e [Pilot] ServerEngines (SEP1)
10de  NVIDIA Corporation
\t0fb9  GP107GL High Definition Audio Controller
\t10f9  TU106 High Definition Audio Controller
\t1ada  TU106 USB 3.1 Host Controller
\t1adb  TU106 USB Type-C UCSI Controller
\t1b80  GP104 [GeForce GTX 1080]
\t1f08  TU106 [GeForce RTX 2060 Rev. A]
144d  Samsung Electronics Co Ltd
\ta808  NVMe SSD Controller SM981/PM981/PM983
14e4  Broadcom Inc. and subsidiaries
\t1639  NetXtreme II BCM5709 Gigabit Ethernet
8086  Intel Corporation
\t1010  82546EB Gigabit Ethernet Controller (Copper)
\t10d3  82574L Gigabit Network Connection
\t1520  I350 Ethernet Controller Virtual Function
\t1521  I350 Gigabit Network Connection
\t244e  82801 PCI Bridge
\t2918  82801IB (ICH9) LPC Interface Controller
\t2922  82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA Controller [AHCI mode]
\t2930  82801I (ICH9 Family) SMBus Controller
\t29c0  82G33/G31/P35/P31 Express DRAM Controller
\t3406  5520 I/O Hub to ESI Port
\t3408  5520/5500/X58 I/O Hub PCI Express Root Port 1
\t340a  5520/5500/X58 I/O Hub PCI Express Root Port 3
\t3a22  82801JI (ICH10 Family) SATA AHCI Controller
\t1c10  6 Series/C200 Series Chipset Family PCI Express Root Port 1
C 00  Unclassified device
C 01  Mass storage controller
\t06  SATA controller
\t08  Non-Volatile memory controller
C 02  Network controller
\t00  Ethernet controller
C 03  Display controller
\t00  VGA compatible controller
C 04  Multimedia controller
\t03  Audio device
C 06  Bridge
\t00  Host bridge
\t01  ISA bridge
\t04  PCI bridge
C 0c  Serial bus controller
\t03  USB controller
\t\t30  XHCI
\t05  SMBus
\t80  Serial bus controller
"""
