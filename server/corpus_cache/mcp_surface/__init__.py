"""What MCP clients see: tools, resources, results and their bounds,
notifications, progress, and the HTTP transport."""
