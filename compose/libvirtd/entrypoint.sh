#!/bin/sh
# virtlogd in the background (libvirt needs it to start a guest), libvirtd in the foreground.
set -e
mkdir -p /var/run/libvirt /var/lib/libvirt/images /var/log/libvirt
rm -f /var/run/libvirt/libvirtd.pid /var/run/libvirt/virtlogd.pid   # left by a previous container
virtlogd -d
exec libvirtd
