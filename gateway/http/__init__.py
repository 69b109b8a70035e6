"""HTTP plumbing every route shares: request ids, client addresses behind proxies, security
headers and CORS, rate limits, request bodies, answer compression, and the gateway's
Prometheus figures."""
