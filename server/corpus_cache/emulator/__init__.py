"""An offline emulator of the Anthropic Messages API with faithful prompt-cache accounting."""

from .runner import RunningEmulator, start_in_thread

__all__ = ["RunningEmulator", "start_in_thread"]
