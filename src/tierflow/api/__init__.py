"""The public HTTP API of a deployment's entry point (FastAPI): /generate, the OpenAI-compatible
routes, contexts, routing. Built on engine/; node/ serves it. (To be built.)
"""
