"""Trio edge of SIP: UDP/TCP sockets, flows, and the transaction layer's timer queue."""
