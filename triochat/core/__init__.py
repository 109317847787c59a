"""The chat itself, synchronous and free of I/O: names, rooms, membership, history, rules."""
