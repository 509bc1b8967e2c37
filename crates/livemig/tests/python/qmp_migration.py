"""Drives livemig through QMP with QEMU's own client library (PyPI qemu.qmp).

usage: qmp_migration.py SRC_SOCK DST_URI SRC2_SOCK DST2_URI
  1. a live migration SRC -> DST_URI, checking the MIGRATION / MIGRATION_PASS / STOP events,
     query-migrate and QEMU's error replies;
  2. a migration SRC2 -> DST2_URI that is cancelled, checking the events and that the guest runs.
Prints OK at the end; any failed check raises.
"""

import asyncio
import sys

from qemu.qmp import ExecuteError, QMPClient


async def connect(name, path):
    client = QMPClient(name)
    await client.connect(path)
    return client


async def collect_until(client, final, timeout=60):
    events = []

    async def run():
        async for ev in client.events:
            events.append(ev)
            if ev["event"] == "MIGRATION" and ev["data"]["status"] in final:
                return

    await asyncio.wait_for(run(), timeout)
    return events


async def expect_error(client, cmd, args, text, klass="GenericError"):
    try:
        await client.execute(cmd, args)
    except ExecuteError as e:
        assert text in e.error.error.desc, (cmd, e.error.error.desc)
        assert e.error.error.class_ == klass, (cmd, e.error.error.class_)
        return
    raise AssertionError(f"{cmd} should have failed")


async def migrate_and_watch(src_sock, uri):
    src = await connect("src", src_sock)
    assert src.greeting.QMP.version["qemu"]["major"] == 7
    await src.execute(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": "events", "state": True},
                          {"capability": "ram-verify", "state": True}]},
    )
    caps = {c["capability"]: c["state"] for c in await src.execute("query-migrate-capabilities")}
    # Only what works is listed (post-copy is not implemented).
    assert caps["events"] and caps["ram-verify"] and "postcopy-preempt" not in caps, caps
    watcher = asyncio.create_task(collect_until(src, ("completed", "failed", "cancelled")))
    await asyncio.sleep(0)
    await src.execute("migrate", {"uri": uri})
    events = await watcher
    names = [e["event"] for e in events]
    statuses = [e["data"]["status"] for e in events if e["event"] == "MIGRATION"]
    assert statuses[0] == "setup" and statuses[-1] == "completed", statuses
    assert "active" in statuses, statuses
    assert "MIGRATION_PASS" in names and "STOP" in names, names
    for e in events:
        assert isinstance(e["timestamp"]["seconds"], int), e
    info = await src.execute("query-migrate")
    assert info["status"] == "completed", info
    assert info["ram"]["transferred"] > 0 and info["ram"]["normal"] > 0, info
    assert info["ram"]["dirty-sync-count"] >= 2, info
    status = await src.execute("query-status")
    assert status["status"] == "postmigrate" and not status["running"], status
    await expect_error(src, "migrate", {"uri": uri},
                       "Can't migrate the vm that was paused due to previous migration")
    await expect_error(src, "nosuch", None, "The command nosuch has not been found",
                       "CommandNotFound")
    await expect_error(src, "migrate", {"uri": 42}, "Invalid parameter type for 'uri'")
    text = await src.execute("human-monitor-command", {"command-line": "info migrate"})
    assert "Migration status: completed" in text, text
    await src.disconnect()


async def migrate_and_cancel(src_sock, uri):
    src = await connect("src2", src_sock)
    await src.execute("migrate-set-capabilities",
                      {"capabilities": [{"capability": "events", "state": True}]})
    await src.execute("migrate-set-parameters", {"max-bandwidth": 4 << 20})
    watcher = asyncio.create_task(collect_until(src, ("active",)))
    await asyncio.sleep(0)
    await src.execute("migrate", {"uri": uri})
    await watcher
    await expect_error(src, "migrate", {"uri": uri}, "There's a migration process in progress")
    await asyncio.sleep(0.3)
    watcher = asyncio.create_task(collect_until(src, ("cancelled", "failed", "completed")))
    await asyncio.sleep(0)
    await src.execute("migrate_cancel")
    events = await watcher
    statuses = [e["data"]["status"] for e in events if e["event"] == "MIGRATION"]
    assert statuses == ["cancelling", "cancelled"], statuses
    assert (await src.execute("query-migrate"))["status"] == "cancelled"
    assert (await src.execute("query-status"))["status"] == "running"
    await src.disconnect()


async def main():
    src, uri, src2, uri2 = sys.argv[1:5]
    await migrate_and_watch(src, uri)
    await migrate_and_cancel(src2, uri2)
    print("OK")


asyncio.run(main())
