"""Pure planning: which documents go in which cache block, and where breakpoints go."""
