"""What the bench sends load to: direct to the upstream, meshd, or one of the peer proxies."""
