"""The worker: the five phase tasks, what they hold while they run, recovery, heartbeat and progress recording."""
