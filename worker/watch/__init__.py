"""Watching libvirt: pool callbacks, re-listings, capacity alarms and which command caused an event."""
