"""A process of counting viewers for the relay benchmark, driven over stdin/stdout.

    python -m bench.viewers BASE COUNT

Starts COUNT viewers that count frames and RTP packets without decoding, prints
`ready`, then answers each `sample` line with one JSON line (video frames per viewer,
packets in all) and stops its viewers on `stop`. Receiving in aiortc costs about as
much per packet as sending, so viewers are spread over processes to keep the clients
from being the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import sys

from stage.relay.ice import gather_on
from tests.peers import CountingViewer


async def main(base: str, count: int) -> None:
    gather_on(("127.0.0.1",))
    viewers = [CountingViewer(base) for _ in range(count)]
    for viewer in viewers:
        await viewer.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "sample":
            sample = {
                "frames": [v.frames["video"] for v in viewers],
                "packets": sum(v.packets() for v in viewers),
            }
            print(json.dumps(sample), flush=True)
        else:  # "stop", or the benchmark went away
            break
    for viewer in viewers:
        await viewer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
