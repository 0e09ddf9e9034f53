"""pcipass.policy."""
