"""Evaluation: questions, answer generation and speed/acceptance measurement."""
