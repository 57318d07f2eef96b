"""Handlers: one function per operation, `handler(ctx, args) -> result model`.

Handlers call libvirt directly; a libvirtError escaping a handler is classified and, when transient,
the whole handler is tried again (handlers converge, so a repeat is safe).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from worker.handlers import disks, host, pools, transfers, volumes
from worker.handlers.context import Context

Handler = Callable[[Context, BaseModel], BaseModel]

HANDLERS: dict[str, Handler] = {
    "host.info": host.info,
    "pool.define": pools.define,
    "pool.build": pools.build,
    "pool.start": pools.start,
    "pool.stop": pools.stop,
    "pool.delete": pools.delete,
    "pool.undefine": pools.undefine,
    "pool.autostart": pools.autostart,
    "pool.refresh": pools.refresh,
    "pool.info": pools.info,
    "pool.list": pools.list_,
    "volume.create": volumes.create,
    "volume.delete": volumes.delete,
    "volume.info": volumes.info,
    "volume.list": volumes.list_,
    "volume.clone": volumes.clone,
    "volume.resize": volumes.resize,
    "volume.wipe": volumes.wipe,
    "volume.upload": transfers.upload,
    "volume.download": transfers.download,
    "volume.attach": disks.attach,
    "volume.detach": disks.detach,
}
