"""edgegw: a single-binary edge media gateway (SIP B2BUA, registrar, media relay, billing)."""

__version__ = "0.1.0"
