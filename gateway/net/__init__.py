"""Network set-up of the box: interfaces by role, addresses, VLANs, routes, policy routing,
the host firewall and DSCP marks.

`state` reads what the kernel holds (pyroute2), `plan` diffs it against the `[network]`
config without touching anything (sans-IO), `apply` carries a plan out and rolls it back,
`firewall` builds the nftables ruleset, `check` asks the gateway for SIP OPTIONS answers.
"""
