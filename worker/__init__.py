"""The libvirt storage worker: executes storage commands from RabbitMQ against libvirt."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("libvirt-storage-worker")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
