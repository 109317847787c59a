"""The server's counters, read by metrics at scrape time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ServerStats:
    """Counters the server keeps for metrics (plain integers: free when nobody reads them)."""

    bytes_out: int = 0
    flood_delays: int = 0
    irc_connections: int = 0
    """Open connections of the IRC door (a gauge; they count in the server's connections too)."""
    queue_high_water: int = 0
    refused_full: int = 0
    refused_per_address: int = 0
    tls_handshake_failures: int = 0
    wrong_passwords: int = 0
