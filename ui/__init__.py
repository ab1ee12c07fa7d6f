"""Beacon's web app over core/: render (values -> what the page shows), jobs (one model job at a time),
settings (widgets -> InjectConfig), handlers (plain functions), layout (the Gradio Blocks)."""
