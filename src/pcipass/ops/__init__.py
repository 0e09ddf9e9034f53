"""pcipass.ops."""
