"""Stage 1's input: fact files in, with errors that name the line, and their limits."""
