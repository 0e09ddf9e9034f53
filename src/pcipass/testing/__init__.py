"""pcipass.testing."""
