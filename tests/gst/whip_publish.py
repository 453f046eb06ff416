"""A WHIP publisher built on GStreamer's webrtcbin, for tests/test_gstreamer_whip.py.

Runs with Debian's /usr/bin/python3 (PyGObject and the GStreamer typelibs come from
Debian packages, not from the venv):

    /usr/bin/python3 tests/gst/whip_publish.py URL KEY SECONDS

It sends a moving test picture (VP8) and a tone (Opus) for SECONDS after the answer is
set, then sends DELETE. Debian's GStreamer 1.22 has no whipsink, so the WHIP exchange
is done here with urllib: one POST carrying the offer with every candidate (no trickle).
Each event goes to stdout as one JSON object a line, for the test to check: the offer,
every gathered candidate, the answer, the DTLS certificate webrtcbin made, the
connection states and the DELETE's status. Exits 0 only if it got connected and the
DELETE was accepted.
"""

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

PIPELINE = """
webrtcbin name=webrtc bundle-policy=max-bundle
videotestsrc is-live=true pattern=ball
  ! video/x-raw,width=320,height=240,framerate=30/1
  ! videoconvert ! vp8enc deadline=1 keyframe-max-dist=30
  ! rtpvp8pay pt=96 ! application/x-rtp,media=video,encoding-name=VP8,payload=96
  ! webrtc.
audiotestsrc is-live=true wave=sine freq=440
  ! audioconvert ! audioresample ! opusenc
  ! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111
  ! webrtc.
"""


def say(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def description(kind, text):
    """A session description of `kind` ("offer" or "answer") from SDP text."""
    result, message = GstSdp.SDPMessage.new_from_text(text)
    if result != GstSdp.SDPResult.OK:
        raise ValueError(f"unreadable SDP ({result}): {text!r}")
    sdp_type = {
        "offer": GstWebRTC.WebRTCSDPType.OFFER,
        "answer": GstWebRTC.WebRTCSDPType.ANSWER,
    }
    return GstWebRTC.WebRTCSessionDescription.new(sdp_type[kind], message)


class WhipPublisher:
    def __init__(self, url, key, seconds):
        self.url, self.key, self.seconds = url, key, seconds
        self.location = None
        self.connected = False
        self.deleted = None
        self.loop = GLib.MainLoop()
        self.pipeline = Gst.parse_launch(PIPELINE)
        self.webrtc = self.pipeline.get_by_name("webrtc")
        self.gather_on_loopback_only()
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("on-ice-candidate", self.on_ice_candidate)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering_state)
        self.webrtc.connect("notify::connection-state", self.on_connection_state)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)

    def gather_on_loopback_only(self):
        # libnice gathers on every interface except loopback unless told its local
        # addresses; once one is added it uses only those. TCP candidates are turned
        # off too: the server (aiortc) speaks ICE over UDP only.
        # Trap: in 1.22 the Python wrapper of "ice-agent" ends up holding webrtcbin's
        # only reference to it (the object is left floating and PyGObject sinks it), so
        # dropping the wrapper frees the ICE agent under webrtcbin and gathering then
        # fails with GST_IS_WEBRTC_ICE assertions. The wrapper is kept for the life of
        # the process, and the process ends with os._exit (see main) so nothing frees
        # it twice at interpreter exit.
        self.ice = self.webrtc.get_property("ice-agent")
        self.ice.set_property("ice-tcp", False)
        agent = self.ice.get_property("agent")
        # libnice also asks routers for port mappings by UPnP (SSDP multicast): off, as
        # nothing may leave 127.0.0.1. No STUN or TURN server is set either.
        agent.set_property("upnp", False)
        address = Nice.Address()
        address.set_from_string("127.0.0.1")
        if not agent.add_local_address(address):
            raise SystemExit("libnice refused 127.0.0.1 as a local address")

    def run(self):
        self.pipeline.set_state(Gst.State.PLAYING)
        # A bound on the whole run, whatever happens: never more than this.
        GLib.timeout_add_seconds(self.seconds + 30, self.give_up)
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)
        return 0 if self.connected and self.deleted == 200 else 1

    # Offer: created at once, POSTed when ICE gathering is complete.

    def on_negotiation_needed(self, webrtc):
        # Not waited for here: this runs on webrtcbin's own thread, which makes the
        # offer, so waiting would never end.
        promise = Gst.Promise.new_with_change_func(self.on_offer_created)
        webrtc.emit("create-offer", None, promise)

    def on_offer_created(self, promise):
        # The offer is rebuilt from its text: the description inside the reply is not
        # ours to keep (used directly, its SDP was once found NULL by
        # set-local-description: "gst_sdp_message_copy: assertion msg != NULL").
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply else None
        if offer is None:
            say("error", message=f"no offer: {reply.to_string() if reply else None}")
            GLib.idle_add(self.finish)
            return
        text = offer.sdp.as_text()
        self.webrtc.emit("set-local-description", description("offer", text), None)

    def on_ice_candidate(self, webrtc, mline, candidate):
        say("candidate", mline=mline, candidate=candidate)

    def on_gathering_state(self, webrtc, _spec):
        state = webrtc.get_property("ice-gathering-state")
        say("ice-gathering", state=state.value_nick)
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self.post_offer)

    def post_offer(self):
        # webrtcbin has written every gathered candidate into its local description.
        offer = self.webrtc.get_property("local-description").sdp.as_text()
        say("offer", sdp=offer)
        request = urllib.request.Request(
            self.url,
            data=offer.encode(),
            method="POST",
            headers={
                "Content-Type": "application/sdp",
                "Authorization": f"Bearer {self.key}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                answer = response.read().decode()
                self.location = response.headers["Location"]
                say("answered", status=response.status, location=self.location)
        except urllib.error.HTTPError as error:
            say(
                "refused", status=error.code, body=error.read().decode(errors="replace")
            )
            self.loop.quit()
            return False
        except urllib.error.URLError as error:
            say("error", message=f"POST failed: {error.reason}")
            self.loop.quit()
            return False
        say("answer", sdp=answer)
        self.webrtc.emit("set-remote-description", description("answer", answer), None)
        GLib.timeout_add_seconds(self.seconds, self.finish)
        return False

    def on_connection_state(self, webrtc, _spec):
        state = webrtc.get_property("connection-state")
        say("connection", state=state.value_nick)
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
            self.connected = True
            GLib.idle_add(self.report_certificate)
        elif state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            GLib.idle_add(self.finish)

    def report_certificate(self):
        transceiver = self.webrtc.emit("get-transceiver", 0)
        transport = transceiver.get_property("sender").get_property("transport")
        say(
            "certificate",
            local=transport.get_property("certificate"),
            remote=transport.get_property("remote-certificate"),
        )
        return False

    # The end: DELETE the WHIP resource, then stop.

    def finish(self):
        if self.location:
            request = urllib.request.Request(
                urllib.parse.urljoin(self.url, self.location),
                method="DELETE",
                headers={"Authorization": f"Bearer {self.key}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=20) as response:
                    self.deleted = response.status
            except urllib.error.HTTPError as error:
                self.deleted = error.code
            say("deleted", status=self.deleted)
        self.loop.quit()
        return False

    def give_up(self):
        say("timeout", seconds=self.seconds + 30)
        return self.finish()

    def on_error(self, _bus, message):
        error, debug = message.parse_error()
        say("error", message=error.message, debug=debug)
        self.finish()


def main():
    url, key, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    Gst.init(None)
    code = WhipPublisher(url, key, seconds).run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
