"""Agent runs, per-session lanes, prompts and the session store."""
