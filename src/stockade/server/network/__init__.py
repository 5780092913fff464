"""Per-sandbox networking: namespaces and veth pairs, the nftables egress policy, the DNS
forwarder and egress proxy that enforce domain allowlists, and the exposed-port proxy."""
