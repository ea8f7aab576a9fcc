"""Development tools: simulated devices, the demo, a process runner for tests and benchmarks."""
