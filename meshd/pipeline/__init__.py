"""The request pipeline: small stages composed in one order (see assemble.py for the order and why)."""
