"""A DTLS transport stopped during its handshake stays stopped (aiortc 1.16, pinned).

aiortc's `RTCDtlsTransport.stop()` leaves a transport that is still shaking hands in
the "connecting" state, and the handshake goes on. When the peer's last flight has
already arrived, the handshake completes after the peer connection was closed: the
transport turns "connected", and the connection's connect task then starts the RTP and
RTCP tasks of its senders and receivers, which nobody stops any more. A sender's RTCP
task wakes every second for ever (sending fails quietly), and through it the whole
connection stays in memory: for a viewer, the visit, its tracks, the transports and
their SSL and SRTP state; for a publisher also a receiver's decoder thread. A viewer
whose DELETE reached the server just as their handshake ended (a reload within a second
of arriving) was kept like that every time (tests/test_relay_load.py).

So a transport notes that it was stopped, and one whose handshake completes after that
is closed on the spot, before the connect task reads its state. This can go once
aiortc stops a handshake in progress itself.
"""

from __future__ import annotations

import logging

from aiortc.rtcdtlstransport import RTCDtlsTransport, State

logger = logging.getLogger(__name__)

_original_start = RTCDtlsTransport.start
_original_stop = RTCDtlsTransport.stop


async def _start(transport: RTCDtlsTransport, remoteParameters) -> None:
    await _original_start(transport, remoteParameters)
    if (
        getattr(transport, "stage_stopped", False)
        and transport._state is State.CONNECTED
    ):
        logger.debug("DTLS handshake completed after its transport was stopped: closed")
        # The data pump was created just now and has not run yet.
        task, transport._task = transport._task, None
        if task is not None:
            task.cancel()
        transport._set_state(State.CLOSED)


async def _stop(transport: RTCDtlsTransport) -> None:
    transport.stage_stopped = True
    await _original_stop(transport)


RTCDtlsTransport.start = _start
RTCDtlsTransport.stop = _stop
