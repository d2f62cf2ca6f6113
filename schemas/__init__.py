"""Arrow schemas, column names, config model, stats and manifest formats."""
