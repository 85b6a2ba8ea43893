"""Real-time verification streams: opened over HTTP, fed over a WebSocket or Asterisk's AudioSocket,
decided by the same claim -> decide logic as ``/v1/voice/verify``."""
