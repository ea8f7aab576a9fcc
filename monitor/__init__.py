"""``fairway monitor``: device online state from the broker's connection events, and alert rules."""
