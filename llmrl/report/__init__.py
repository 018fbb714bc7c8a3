"""Reports: plots (PNG) and summaries (Markdown + JSON) of finished runs."""
