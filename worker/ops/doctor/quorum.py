"""Whether the command queue's quorum can survive: its members online, against the majority it needs.

AMQP does not tell a queue's members; RabbitMQ's management API does (`/api/queues/<vhost>/<name>`,
plugin rabbitmq_management, port 15672 on each node). The check asks each reachable node's API in
turn, with the broker's own credentials; without the plugin it says so and skips.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from messages.brokers import broker_urls
from worker.ops.doctor.context import Context
from worker.ops.doctor.report import Check, fail, ok, skip, warn

MANAGEMENT_PORT = 15672
MANAGEMENT_TIMEOUT = 5.0


def check_quorum_members(ctx: Context) -> Check:
    name = "quorum_members"
    settings = ctx.settings
    if settings.queue_type != "quorum":
        return skip(name, "the command queue is a classic queue")
    if ctx.broker is None:
        return skip(name, "not checked: the broker is unreachable")
    queue = settings.topology.command_queue
    tried: list[str] = []
    for url in broker_urls(ctx.url):
        api = _queue_api(url, queue)
        try:
            status = _get(api, url)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return skip(name, f"{queue} does not exist yet")
            tried.append(f"{_shown(api)}: HTTP {error.code}")
            continue
        except (OSError, ValueError) as error:
            tried.append(f"{_shown(api)}: {ctx.clean(error)}")
            continue
        return _verdict(name, queue, status)
    return skip(name, "cannot count the quorum queue's members: no management API answered ("
                + "; ".join(tried) + "); enable the rabbitmq_management plugin to have them checked")


def _verdict(name: str, queue: str, status: dict[str, Any]) -> Check:
    members, online = status.get("members") or [], status.get("online") or []
    if not members:
        return skip(name, f"{queue}: the broker reports no quorum members")
    majority = len(members) // 2 + 1
    detail = f"{queue}: {len(online)} of {len(members)} members online ({', '.join(online) or 'none'}), " \
             f"leader {status.get('leader') or 'none'}"
    if len(online) < majority:
        return fail(name, f"{detail}; a quorum needs {majority}: the queue accepts and delivers nothing",
                    "start the nodes that are down (rabbitmqctl cluster_status lists them)")
    if len(online) < len(members):
        return warn(name, f"{detail}; losing {len(online) - majority + 1} more member(s) stops the queue",
                    "bring the missing members back (rabbitmq-queues grow or restart their nodes)")
    return ok(name, detail)


def _queue_api(url: str, queue: str) -> str:
    parts = urllib.parse.urlsplit(url)
    vhost = urllib.parse.unquote(parts.path[1:]) if parts.path not in ("", "/") else "/"
    scheme = "https" if parts.scheme == "amqps" else "http"
    return (f"{scheme}://{parts.hostname}:{MANAGEMENT_PORT}/api/queues/"
            f"{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}")


def _get(api: str, url: str) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    user, password = urllib.parse.unquote(parts.username or "guest"), urllib.parse.unquote(parts.password or "guest")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(api, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=MANAGEMENT_TIMEOUT) as response:
        return json.loads(response.read())


def _shown(api: str) -> str:
    return api.split("/api/", 1)[0]
