"""The SDK a user's app imports: it speaks HTTP to a deployment's entry point (never imports node/)."""
