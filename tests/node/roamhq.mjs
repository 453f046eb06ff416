// A WHIP publisher and a WHEP viewer built on @roamhq/wrtc (libwebrtc in Node), for
// tests/test_npm_clients.py. Nothing here knows Stage beyond the two public protocols.
//
//   node roamhq.mjs publish URL KEY SECONDS   moving i420 video + a 48 kHz tone, then DELETE
//   node roamhq.mjs watch URL SECONDS         counts the video frames libwebrtc decodes
//
// Each step is one JSON line on stdout; the last line, {"event": "done", ...}, carries
// the figures. The offer is sent only after ICE gathering completes (no trickle), so it
// carries every candidate this peer would use.

import wrtc from "@roamhq/wrtc";

const { RTCPeerConnection, nonstandard } = wrtc;
const { RTCVideoSource, RTCAudioSource, RTCVideoSink } = nonstandard;

const WIDTH = 320;
const HEIGHT = 240;
const FPS = 30;
const RATE = 48000;
const started = performance.now();

function say(event, fields = {}) {
  const seconds = (performance.now() - started) / 1000;
  console.log(JSON.stringify({ event, seconds, ...fields }));
}

function candidateAddresses(sdp) {
  // a=candidate:foundation component transport priority ADDRESS port typ ...
  return sdp
    .split(/\r?\n/)
    .filter((line) => line.startsWith("a=candidate:"))
    .map((line) => line.split(" ")[4]);
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
}

function connected(pc) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (pc.connectionState === "connected") resolve();
      if (["failed", "closed"].includes(pc.connectionState))
        reject(new Error(`connection ${pc.connectionState}`));
    };
    pc.addEventListener("connectionstatechange", check);
    check();
  });
}

async function negotiate(pc, url, headers) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const offer = pc.localDescription.sdp;
  say("offer", { candidates: candidateAddresses(offer) });
  const response = await fetch(url, {
    method: "POST",
    body: offer,
    headers: { "Content-Type": "application/sdp", ...headers },
  });
  const answer = await response.text();
  if (response.status !== 201)
    throw new Error(`POST ${url} answered ${response.status}: ${answer}`);
  const location = new URL(response.headers.get("location"), url);
  say("answer", { candidates: candidateAddresses(answer), location: location.href });
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  await connected(pc);
  say("connected");
  return location;
}

// The addresses of the candidate pair ICE chose, as libwebrtc reports them.
async function selectedPair(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId)
      pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair)
    stats.forEach((s) => {
      if (s.type === "candidate-pair" && s.state === "succeeded" && s.nominated)
        pair = s;
    });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return {
    local: local && (local.address || local.ip),
    remote: remote && (remote.address || remote.ip),
  };
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// An i420 frame: a grey picture with a bright bar sweeping across it and a colour
// that drifts, so an encoder always has something new to send.
function videoFrame(count) {
  const ySize = WIDTH * HEIGHT;
  const data = new Uint8ClampedArray(ySize * 1.5);
  data.fill(60, 0, ySize);
  const x = (count * 8) % WIDTH;
  for (let row = 0; row < HEIGHT; row++) data.fill(235, row * WIDTH + x, row * WIDTH + Math.min(x + 16, WIDTH));
  data.fill((count * 3) % 256, ySize, ySize + ySize / 4);
  data.fill(255 - ((count * 3) % 256), ySize + ySize / 4);
  return { width: WIDTH, height: HEIGHT, data };
}

// 10 ms of a 440 Hz tone, mono 16-bit: the frame size libwebrtc's audio source takes.
function audioChunk(count) {
  const frames = RATE / 100;
  const samples = new Int16Array(frames);
  for (let i = 0; i < frames; i++)
    samples[i] = Math.round(8000 * Math.sin((2 * Math.PI * 440 * (count * frames + i)) / RATE));
  return { samples, sampleRate: RATE, bitsPerSample: 16, channelCount: 1, numberOfFrames: frames };
}

async function publish(url, key, seconds) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  const video = new RTCVideoSource();
  const audio = new RTCAudioSource();
  const videoTrack = video.createTrack();
  const audioTrack = audio.createTrack();
  pc.addTransceiver(audioTrack, { direction: "sendonly" });
  pc.addTransceiver(videoTrack, { direction: "sendonly" });

  // Frames go out on a clock from the start, so the encoder is warm when ICE connects.
  let videoCount = 0;
  let audioCount = 0;
  const clock = performance.now();
  const ticker = setInterval(() => {
    const elapsed = performance.now() - clock;
    while (videoCount < (elapsed * FPS) / 1000) video.onFrame(videoFrame(videoCount++));
    while (audioCount < elapsed / 10) audio.onData(audioChunk(audioCount++));
  }, 5);

  const auth = { Authorization: `Bearer ${key}` };
  const location = await negotiate(pc, url, auth);
  await sleep(seconds * 1000);
  const pair = await selectedPair(pc);
  const stats = await pc.getStats();
  let framesEncoded = 0;
  stats.forEach((s) => {
    if (s.type === "outbound-rtp" && (s.kind || s.mediaType) === "video")
      framesEncoded += s.framesEncoded || 0;
  });
  clearInterval(ticker);
  const goodbye = await fetch(location, { method: "DELETE", headers: auth });
  videoTrack.stop();
  audioTrack.stop();
  pc.close();
  say("done", { pair, framesSent: videoCount, framesEncoded, deleteStatus: goodbye.status });
}

async function watch(url, seconds) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  let frames = 0;
  let firstFrame = null;
  const sizes = new Set();
  const sinks = [];
  pc.addEventListener("track", ({ track }) => {
    if (track.kind !== "video") return;
    const sink = new RTCVideoSink(track);
    sink.addEventListener("frame", ({ frame }) => {
      frames++;
      sizes.add(`${frame.width}x${frame.height}`);
      if (firstFrame === null) {
        firstFrame = (performance.now() - started) / 1000;
        say("first-frame");
      }
    });
    sinks.push(sink);
  });
  const location = await negotiate(pc, url, {});
  await sleep(seconds * 1000);
  const pair = await selectedPair(pc);
  const goodbye = await fetch(location, { method: "DELETE" });
  for (const sink of sinks) sink.stop();
  pc.close();
  say("done", { pair, frames, firstFrame, sizes: [...sizes], deleteStatus: goodbye.status });
}

const [mode, ...args] = process.argv.slice(2);
try {
  if (mode === "publish") await publish(args[0], args[1], Number(args[2]));
  else if (mode === "watch") await watch(args[0], Number(args[1]));
  else throw new Error(`unknown mode ${mode}: publish or watch`);
  process.exit(0);
} catch (error) {
  say("error", { message: String(error && error.stack ? error.stack : error) });
  process.exit(1);
}
