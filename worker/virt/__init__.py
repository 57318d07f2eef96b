"""Everything that talks to libvirt: connection, errors, XML, object descriptions."""
