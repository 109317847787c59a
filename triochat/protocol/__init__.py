"""The wire dialects, sans-IO: bytes in, events out, bytes back; nothing here imports trio.

One module per dialect: :mod:`~triochat.protocol.line` is protocol v1, the plain
UTF-8 lines that ``nc`` speaks.
"""
