"""The auth/relay consumer and the device simulator."""
