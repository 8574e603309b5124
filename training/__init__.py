"""Quiet-STaR training (`quietstar train`): imports only the `quietstar` core package."""
