"""The auth/relay consumer: contract checks, the device registry, rate limits, and
sharding accepted readings into tenant queues."""
