"""Chat platform adapters: each translates its platform to the core at the edge."""
