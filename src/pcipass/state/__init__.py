"""pcipass.state."""
