"""The chaos soak (`scripts/soak`): a realistic command mix through the broker while faults hit the
workers, libvirtd, the broker and the disks, then an invariant checker and one table."""
