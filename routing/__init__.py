"""routing: the dtab language, delegation, identifiers and routing files (no sockets, no meshd imports)."""
