"""Call logic: the SIP core, registrar, router, B2BUA, rate limits and call records."""
