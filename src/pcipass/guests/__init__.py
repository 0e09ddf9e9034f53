"""pcipass.guests."""
