"""Renderers: a plan or a drift report as text, JSON, Markdown or HTML. Pure functions of data."""
