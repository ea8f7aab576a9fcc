"""``fairway gateway``: the push gateway (Twisted, Server-Sent Events) for live notifications."""
