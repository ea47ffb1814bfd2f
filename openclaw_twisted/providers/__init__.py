"""Model providers behind one interface: OpenAI-compatible, Anthropic, echo."""
