"""Namer kinds -> config classes (`namers:` entries pick one by `kind:`)."""

from __future__ import annotations

from typing import Final

from meshd.discovery.dns_config import DnsNamerConfig
from meshd.discovery.fs import FsNamerConfig
from meshd.discovery.k8s_config import K8sNamerConfig

NamerConfig = FsNamerConfig | DnsNamerConfig | K8sNamerConfig

NAMERS: Final[dict[str, type[NamerConfig]]] = {
    "fs": FsNamerConfig,
    "dns": DnsNamerConfig,
    "k8s": K8sNamerConfig,
}
