"""`corpus-cache probe`: check the model table against the API the SDK points at."""
