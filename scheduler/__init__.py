"""The fair scheduler: deficit round robin over tenant queues into MongoDB."""
