"""Drives one migration the way libvirt does, with QEMU's own client library (PyPI qemu.qmp).

usage: libvirt_flow.py SRC_SOCK DST_SOCK URI

The destination was started paused (-S) with `-incoming defer`. The same script runs unchanged
against livemig -> livemig, livemig -> QEMU 7.2 and QEMU 7.2 -> QEMU 7.2:
  1. probe query-qmp-schema (libvirt-style paths) and query-migrate-capabilities on both sides;
  2. enable events, pause-before-switchover, late-block-activate where listed;
  3. migrate-incoming, migrate, wait for pre-switchover, check migrate-continue's state check,
     migrate-continue, wait for completion on both sides;
  4. cont on the destination; the guest runs there, the source is postmigrate.
Prints OK at the end; any failed check raises.
"""

import asyncio
import sys

from qemu.qmp import ExecuteError, QMPClient

TIMEOUT = 120


def schema_lookup(schema, path):
    """Resolves 'command/arg-type/member' like libvirt's virQEMUQAPISchemaPathGet."""
    by_name = {e["name"]: e for e in schema}
    parts = path.split("/")
    cur = by_name.get(parts[0])
    for p in parts[1:]:
        if cur is None:
            return None
        if p in ("arg-type", "ret-type"):
            cur = by_name.get(cur.get(p))
        else:
            member = next((m for m in cur.get("members", []) if m["name"] == p), None)
            cur = member and by_name.get(member["type"])
    return cur


class Events:
    """Collects a client's events in the background."""

    def __init__(self, client):
        self.seen = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self.run(client))

    async def run(self, client):
        async for ev in client.events:
            self.seen.append(ev)
            self.changed.set()

    def statuses(self):
        return [e["data"]["status"] for e in self.seen if e["event"] == "MIGRATION"]

    async def wait_status(self, wanted):
        async def wait():
            while not any(s in wanted for s in self.statuses()):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), TIMEOUT)
        return next(s for s in self.statuses() if s in wanted)


async def probe(client):
    schema = await client.execute("query-qmp-schema")
    for path in ("migrate-set-parameters/arg-type/max-bandwidth",
                 "migrate-set-parameters/arg-type/downtime-limit",
                 "migrate-continue/arg-type/state",
                 "migrate-incoming/arg-type/uri",
                 "MIGRATION/arg-type/status"):
        assert schema_lookup(schema, path) is not None, path
    assert schema_lookup(schema, "migrate-set-parameters/arg-type/no-such-param") is None
    state = schema_lookup(schema, "migrate-continue/arg-type/state")
    assert "pre-switchover" in state["values"], state
    caps = [c["capability"] for c in await client.execute("query-migrate-capabilities")]
    return caps


async def enable(client, caps, wanted):
    chosen = [c for c in wanted if c in caps]
    await client.execute("migrate-set-capabilities", {
        "capabilities": [{"capability": c, "state": True} for c in chosen]})
    on = {c["capability"]: c["state"] for c in await client.execute("query-migrate-capabilities")}
    assert all(on[c] for c in chosen), on
    return chosen


async def main(src_sock, dst_sock, uri):
    src = QMPClient("src")
    await src.connect(src_sock)
    dst = QMPClient("dst")
    await dst.connect(dst_sock)
    src_caps = await probe(src)
    dst_caps = await probe(dst)
    assert "pause-before-switchover" in src_caps and "events" in src_caps, src_caps
    await enable(src, src_caps, ("events", "pause-before-switchover", "late-block-activate"))
    await enable(dst, dst_caps, ("events", "late-block-activate"))
    await src.execute("migrate-set-parameters", {"max-bandwidth": 1 << 30,
                                                 "downtime-limit": 300})
    assert (await dst.execute("query-status"))["status"] == "inmigrate"

    src_events = Events(src)
    dst_events = Events(dst)
    await dst.execute("migrate-incoming", {"uri": uri})
    await src.execute("migrate", {"uri": uri})
    assert await src_events.wait_status(("pre-switchover", "failed")) == "pre-switchover"
    info = await src.execute("query-migrate")
    assert info["status"] == "pre-switchover", info
    status = await src.execute("query-status")
    assert status["status"] == "finish-migrate" and not status["running"], status
    try:
        await src.execute("migrate-continue", {"state": "active"})
        raise AssertionError("migrate-continue in the wrong state succeeded")
    except ExecuteError as e:
        assert e.error.error.desc == "Migration not in expected state: pre-switchover", e
    await src.execute("migrate-continue", {"state": "pre-switchover"})
    final = await src_events.wait_status(("completed", "failed", "cancelled"))
    assert final == "completed", (final, await src.execute("query-migrate"))
    statuses = src_events.statuses()
    assert statuses == ["setup", "active", "pre-switchover", "device", "completed"], statuses
    assert await dst_events.wait_status(("completed", "failed")) == "completed"
    assert (await dst.execute("query-migrate"))["status"] == "completed"
    # Started with -S: the destination waits for cont.
    assert (await dst.execute("query-status"))["status"] == "paused"
    await dst.execute("cont")
    status = await dst.execute("query-status")
    assert status["status"] == "running" and status["running"], status
    assert (await src.execute("query-status"))["status"] == "postmigrate"
    src_events.task.cancel()
    dst_events.task.cancel()
    await src.disconnect()
    await dst.disconnect()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
