"""pcipass.cli."""
