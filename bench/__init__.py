"""The benchmark: the gateway side by side with a fake model provider and a minimal proxy."""
