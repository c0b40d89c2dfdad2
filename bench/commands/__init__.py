"""The commands of `python -m bench`, one module each (or two close ones): its parser and what it does."""
