"""Integrations with evaluation harnesses (lmms-eval)."""
