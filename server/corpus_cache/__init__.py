"""corpus-cache: a folder of documents in Anthropic prompt-cache blocks, served over MCP."""

__version__ = "0.1.0"
