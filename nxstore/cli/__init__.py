"""Command line (filled in by the CLI module)."""
