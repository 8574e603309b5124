"""Black-box GSM8K / CommonsenseQA evaluation against an OpenAI-compatible endpoint (HTTP only).

Nothing here imports the model, server or training packages (house-style point 1). Entry points:
`run_eval` (one run -> summary dict), `run_sweep` (all runs the CLI arguments ask for) and
`python -m clients` / `quietstar eval`.
"""

from __future__ import annotations

from clients.config import EvalConfig, EvalError
from clients.runner import run_eval, run_sweep

__all__ = ["EvalConfig", "EvalError", "run_eval", "run_sweep"]
