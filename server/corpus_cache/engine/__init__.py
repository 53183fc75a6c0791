"""The live corpus and asking: refresh and swap, route, fan-out, coalescing,
conversations, warming and keeping warm."""
