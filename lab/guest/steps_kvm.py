"""KVM scenario steps (issue 8), run in the L1 guest by agent.py."""

from __future__ import annotations
