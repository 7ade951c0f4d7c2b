"""The wire: the run's CA, the TLS listener and forward proxies (`network`), and the front door
that routes each request to its service by host name (`frontdoor`)."""
