"""The fleet: hosts, GPUs, the worker registry, placement, pace, the queue ETA, the local cluster and doctor."""
