"""The server's I/O: listeners, connections, outboxes, the history store and metrics."""
