"""OpenAI-compatible HTTP server (FastAPI). The engine knows nothing about HTTP; this
package knows nothing about tensors."""
