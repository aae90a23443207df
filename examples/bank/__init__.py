"""A small bank made of HTTP services that talk to each other only through meshd.

See README.md in this directory for the services, the demo story and how to run it.
"""
