"""The simulated kernel of an example host (``pcipass-example``).

Product code, below ``host/``: ``Host.for_command`` builds a host on it when a
tree carries ``.pcipass-simulated-host``, and the test kit
(``pcipass.testing``) builds its fake hosts on it.  It imports only the base
modules (address, errors, runner), never ``pcipass.testing``.
"""
