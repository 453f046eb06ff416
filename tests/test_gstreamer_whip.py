"""A publisher no one here wrote: GStreamer's webrtcbin, from Debian's packages.

Debian's GStreamer 1.22 has no whipsink, so tests/gst/whip_publish.py does the WHIP
exchange around webrtcbin; everything WebRTC (ICE by libnice, DTLS with webrtcbin's own
certificate, SRTP, VP8 and Opus payloading) is GStreamer's. It runs with Debian's
/usr/bin/python3, where PyGObject and the typelibs live (`make test` installs them).

What matters here is the certificate: webrtcbin makes an RSA one, and aiortc as DTLS
client offers only ECDSA suites (RELAY-NOTES.md), so this publisher connects only
because the server takes the DTLS server role. The test proves the certificate is RSA
twice: the PEM webrtcbin reports is an RSA certificate whose SHA-256 is the offer's
fingerprint, and the certificate the server's DTLS transport received in the handshake
is that same RSA certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from stage.appkeys import VENUE
from tests.peers import Viewer
from tests.test_ffmpeg_whip import decode_counts, download_recording, wait_for
from tests.test_server_contract import live_ids

SYSTEM_PYTHON = "/usr/bin/python3"
PUBLISHER = Path(__file__).parent / "gst" / "whip_publish.py"
# Seconds the publisher sends after its answer is set; then it sends DELETE.
SECONDS = 8


@pytest.fixture(scope="session")
def gstreamer() -> None:
    """Debian's python3 can load webrtcbin and everything the publisher uses."""
    check = (
        "import gi\n"
        "for name in ('Gst', 'GstSdp', 'GstWebRTC'): gi.require_version(name, '1.0')\n"
        "gi.require_version('Nice', '0.1')\n"
        "from gi.repository import Gst, GstSdp, GstWebRTC, Nice\n"
        "Gst.init(None)\n"
        "names = 'webrtcbin nicesrc dtlsenc srtpenc videotestsrc vp8enc rtpvp8pay "
        "audiotestsrc opusenc rtpopuspay'.split()\n"
        "missing = [n for n in names if Gst.ElementFactory.find(n) is None]\n"
        "assert not missing, f'GStreamer elements missing: {missing}'\n"
    )
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, env=system_env()
    )
    if result.returncode != 0:
        pytest.fail(
            "GStreamer from Debian is not usable (run `make test`, which installs it):\n"
            + result.stderr[-2000:]
        )


def system_env() -> dict:
    """The environment without the venv: Debian's python3 must find Debian's gi."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    return env


@contextlib.asynccontextmanager
async def gstreamer_publishing(url: str, key: str, out: Path, err: Path):
    """The publisher running; killed by its PID on the way out if still running."""
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON,
            str(PUBLISHER),
            url,
            key,
            str(SECONDS),
            stdout=stdout,
            stderr=stderr,
            env=system_env(),
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def one(log: list[dict], name: str) -> dict:
    found = [e for e in log if e["event"] == name]
    assert len(found) == 1, f"expected one {name!r} event, got {found}"
    return found[0]


def candidate_addresses(lines) -> set[str]:
    """The connection addresses of ICE candidate lines (RFC 8839: the 5th field)."""
    return {line.split()[4] for line in lines}


def sha256_fingerprint(certificate: x509.Certificate) -> str:
    return ":".join(f"{b:02X}" for b in certificate.fingerprint(hashes.SHA256()))


def server_dtls_transports(server) -> list:
    """The DTLS transports of the server's side of every publisher."""
    venue = server.app[VENUE]
    return [
        t.receiver.transport
        for publisher in venue.publishers.values()
        for t in publisher.pc.getTransceivers()
    ]


async def test_gstreamer_publishes_with_its_rsa_certificate_to_a_viewer_and_the_recording(
    server, http, new_stage, gstreamer, tmp_path
):
    stage = await new_stage("GStreamer")
    out, err = tmp_path / "publisher.jsonl", tmp_path / "publisher.log"
    url = f"{server.base}/whip/{stage['id']}"

    def tail() -> str:
        return out.read_text()[-3000:] + "\n" + err.read_text(errors="replace")[-3000:]

    async with gstreamer_publishing(url, stage["key"], out, err) as process:
        launched = time.monotonic()

        async def is_live():
            if process.returncode is not None:
                raise AssertionError(f"the publisher ended early:\n{tail()}")
            return stage["id"] in await live_ids(server, http)

        await wait_for(is_live, "GStreamer's stage is not live", 30, err)
        live_after = time.monotonic() - launched

        # The handshake the server did: the certificate the publisher presented (and
        # proved it holds the key of, by signing the handshake) is RSA. The cipher suite
        # says nothing about it: the suite names the DTLS server's key, here aiortc's
        # ECDSA one.
        transports = server_dtls_transports(server)
        assert transports, "the server holds no publisher"
        peer_certificates = set()
        for transport in transports:
            assert transport.state == "connected", transport.state
            assert transport._role == "server", transport._role
            ssl = transport._ssl
            peer = ssl.get_peer_certificate(as_cryptography=True)
            assert isinstance(peer.public_key(), rsa.RSAPublicKey), peer.public_key()
            peer_certificates.add(sha256_fingerprint(peer))
            # What the server's ICE saw of the publisher, peer-reflexive candidates
            # learnt from its checks included, and the pair in use: 127.0.0.1 only.
            ice = transport.transport.iceGatherer._connection
            assert {c.host for c in ice.remote_candidates} == {"127.0.0.1"}, (
                ice.remote_candidates
            )
            assert ice._nominated and {
                p.remote_addr[0] for p in ice._nominated.values()
            } == {"127.0.0.1"}, ice._nominated
        cipher = transports[0]._ssl.get_cipher_name()

        viewer = await Viewer(server.base).start(stage_id=stage["id"])
        try:
            first = await viewer.wait_video(count=1, timeout=15)
            await viewer.wait_video(count=30, timeout=15)
            first_frame_after = first - launched
            sizes = {s[:2] for s in viewer.video_since(0)}
            assert sizes == {(320, 240)}, sizes
            assert viewer.frames["audio"], "the viewer decoded no audio"
        finally:
            await viewer.stop()

        returncode = await asyncio.wait_for(process.wait(), SECONDS + 40)
    assert returncode == 0, f"the publisher failed ({returncode}):\n{tail()}"
    print(
        f"\nGStreamer webrtcbin WHIP ({cipher}): launch -> live {live_after:.2f} s, "
        f"launch -> first decoded frame at a viewer {first_frame_after:.2f} s"
    )

    log = events(out)
    offer, answer = one(log, "offer")["sdp"], one(log, "answer")["sdp"]
    assert one(log, "deleted")["status"] == 200

    # Loopback only: every candidate libnice gathered, and every one in the offer
    # (all of them: no trickle), is on 127.0.0.1 over UDP.
    gathered = [e["candidate"] for e in log if e["event"] == "candidate"]
    offered = re.findall(r"^a=(candidate:.*?)\r?$", offer, re.M)
    assert gathered and offered, f"no candidates:\n{offer}"
    assert candidate_addresses(gathered) == {"127.0.0.1"}, gathered
    assert candidate_addresses(offered) == {"127.0.0.1"}, offered
    assert all(line.split()[2].upper() == "UDP" for line in offered), offered

    # webrtcbin's own certificate is RSA, it is the one its offer names, and it is the
    # one the server received in the DTLS handshake.
    local = x509.load_pem_x509_certificate(one(log, "certificate")["local"].encode())
    assert isinstance(local.public_key(), rsa.RSAPublicKey), local.public_key()
    offered_fingerprints = set(re.findall(r"a=fingerprint:sha-256 (\S+)", offer))
    assert offered_fingerprints == {sha256_fingerprint(local)}, offered_fingerprints
    assert peer_certificates == {sha256_fingerprint(local)}, peer_certificates

    # It offered both DTLS roles; the server took the server role.
    assert set(re.findall(r"a=setup:(\w+)", offer)) == {"actpass"}, offer
    assert set(re.findall(r"a=setup:(\w+)", answer)) == {"passive"}, answer

    # Its DELETE ended the performance; the recording is Matroska and decodes.
    path = await download_recording(
        server, http, stage, tmp_path / "recording.mkv", timeout=30
    )
    counts = decode_counts(path)
    print(f"recording: {counts}")
    assert counts["codecs"] == {"video": "vp8", "audio": "opus"}, counts
    # About SECONDS at 30 fps and 50 Opus frames a second were sent: far more than
    # half of it must decode.
    assert counts["video"] >= SECONDS * 30 // 2, counts
    assert counts["audio"] >= SECONDS * 50 // 2, counts
