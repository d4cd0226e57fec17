"""Trio edge of SIP: UDP/TCP/TLS sockets, flows, and the transaction layer's timer queue."""
