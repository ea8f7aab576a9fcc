"""AMQP plumbing: connection parameters, backoff, the consumer base, side connections,
and the RabbitMQ management API."""
