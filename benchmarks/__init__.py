"""Latency and throughput benchmarks (`codefill bench`) and the device script for GPU figures."""
