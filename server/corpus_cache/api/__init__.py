"""Talking to the Messages API: the backend (real or emulator), building requests,
token counts, the spending guard, and what a failed call is recorded as."""
