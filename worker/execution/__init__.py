"""Execution: the scheduler and its locks, the retry policy, and the runner that turns a handler's outcome into a result."""
