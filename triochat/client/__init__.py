"""The client side: one connection, ``triochat join``, its terminal UI, and bots."""
