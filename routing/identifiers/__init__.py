"""Identifiers: request head -> logical name (`/svc/<something>`), chosen by `kind:`."""
