"""Sans-IO SIP: messages, URIs, digest auth, transactions, dialogs, session timers, SDP."""
