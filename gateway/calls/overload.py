"""The Trio side of overload control: samples feeding `admission.LoadMeter`.

One small task wakes every `SAMPLE_INTERVAL` and records the process's CPU time (every
thread: `time.process_time()`) and how late it woke. Lateness is the second signal: on
a box whose cores are taken by other processes the gateway's own CPU use looks modest
while its event loop, and with it every SIP timer and media packet, falls behind.
"""

from __future__ import annotations

import time

import trio

from gateway.calls.admission import LoadMeter

# Ten samples per LOAD_WINDOW: enough for a stable mean, negligible cost (about a
# microsecond of CPU per wake-up).
SAMPLE_INTERVAL = 0.1


async def sample_load(meter: LoadMeter, interval: float = SAMPLE_INTERVAL) -> None:
    """Feed `meter` until cancelled."""
    due = trio.current_time()
    meter.sample(due, time.process_time())
    while True:
        due += interval
        await trio.sleep_until(due)
        now = trio.current_time()
        meter.sample(now, time.process_time(), lag=now - due)
        due = now  # a late wake-up counts once, not again for every interval it missed
