"""kd-bench: a plugin-based benchmark harness for cross-domain knowledge distillation."""

__version__ = "0.1.0"
