"""pcipass.persist."""
