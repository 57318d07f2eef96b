"""The wire contract of the libvirt storage worker as code.

Importing this package never imports pika or libvirt; only `messages.client` talks to a broker.
"""

from messages.command import Command, CommandRejected, Undecodable, decode, encode
from messages.events import CloudEvent, EventType
from messages.objects import DiskObject, PoolObject, PoolState, VolumeObject
from messages.operations import OPERATIONS, Operation
from messages.results import ErrorCode, ErrorInfo, LibvirtError, Result, Status
from messages.topology import Topology

__all__ = [
    "Command", "CommandRejected", "Undecodable", "decode", "encode",
    "CloudEvent", "EventType",
    "DiskObject", "PoolObject", "PoolState", "VolumeObject",
    "OPERATIONS", "Operation",
    "ErrorCode", "ErrorInfo", "LibvirtError", "Result", "Status",
    "Topology",
]
