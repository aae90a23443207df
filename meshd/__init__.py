"""meshd: a service-mesh proxy daemon in the spirit of linkerd 1.x."""

__version__ = "0.1.0"
