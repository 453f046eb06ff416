"""Stage: live performance roulette with a WebRTC relay and recorder."""
