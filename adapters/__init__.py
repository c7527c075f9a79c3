"""Chat platform adapters; each translates its platform's types to the core's at the edge."""
