"""The bank's event log: the `events` service (service.py) over one interface (log.py) and two engines,
embedded SQLite (sqlite_log.py, the default) and NATS JetStream (nats_log.py). See docs/events.md."""
