"""Jakiro* draft head, static tree choices and drafting, and its ``EaModel``."""
