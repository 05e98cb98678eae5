"""Models: the LM contract, tokenizers, bundled models, export and (later) the unified package."""
