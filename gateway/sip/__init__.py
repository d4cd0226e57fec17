"""sip package."""
