"""pcipass.host."""
