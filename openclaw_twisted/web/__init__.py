"""The HTTP edge: one-port dispatch, routes, chat completions, SSE."""
