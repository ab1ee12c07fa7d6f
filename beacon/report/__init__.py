"""What a run leaves: the records, the report, the plots, and the export to a merged model or GGUF."""
