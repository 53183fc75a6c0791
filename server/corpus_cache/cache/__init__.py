"""What we believe the API's prompt cache holds, and what to do about it: cache
entries, marker blocks, history, the TTL and keep-warm policy, the live corpus."""
