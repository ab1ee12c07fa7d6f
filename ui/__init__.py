"""Beacon's Gradio UI: layout, handlers and rendering over core/."""
