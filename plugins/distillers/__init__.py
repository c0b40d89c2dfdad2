"""Built-in distillers."""
