"""Real local servers and network faults for tests, demos and benchmarks."""
