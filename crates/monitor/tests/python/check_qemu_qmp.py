"""Manual compatibility check of livemig's QMP server with QEMU's own `qemu.qmp` client.

    cargo run -p monitor --example mock_qmp -- /tmp/qmp.sock &
    python3 crates/monitor/tests/python/check_qemu_qmp.py /tmp/qmp.sock

Prints the replies and ends with OK; the mock server exits after `quit`.
"""
import asyncio, sys
from qemu.qmp import QMPClient, ExecuteError

async def main(path):
    qmp = QMPClient('check')
    await qmp.connect(path)
    print('greeting:', qmp.greeting)
    print('query-status:', await qmp.execute('query-status'))
    print('query-version:', await qmp.execute('query-version'))
    await qmp.execute('migrate-set-capabilities', {'capabilities': [{'capability': 'events', 'state': True}]})
    events = []
    async def collect():
        async for ev in qmp.events:
            events.append(ev)
            if len(events) >= 2:
                return
    task = asyncio.create_task(collect())
    await qmp.execute('migrate', {'uri': 'tcp:127.0.0.1:4444'})
    await asyncio.wait_for(task, 10)
    print('events:', [(e['event'], e.get('data')) for e in events])
    print('query-migrate:', await qmp.execute('query-migrate'))
    try:
        await qmp.execute('migrate', {'uri': 'tcp:127.0.0.1:4444'})
    except ExecuteError as e:
        print('expected error:', e.error_class, '-', str(e))
    try:
        await qmp.execute('nosuch')
    except ExecuteError as e:
        print('expected error:', e.error_class, '-', str(e))
    print('hmc:', repr(await qmp.execute('human-monitor-command', {'command-line': 'info status'})))
    print('quit:', await qmp.execute('quit'))
    await qmp.disconnect()
    print('OK')

asyncio.run(main(sys.argv[1]))
