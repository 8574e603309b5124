"""OpenAI-compatible serving of Quiet-STaR models: `engine/` (batching, thoughts), `api/` (HTTP)."""
