"""The HTTP door: the ASGI middleware, where it places itself in the stack, WebSocket metering."""
