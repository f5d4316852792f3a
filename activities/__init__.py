"""Activities: all I/O — read-model projection, look-ups, audit, outbox and email."""
