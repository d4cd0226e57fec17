"""Media plane: RTP packets, latching decisions, the Trio relay, native codecs."""
