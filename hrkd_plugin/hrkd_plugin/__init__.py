"""HRKD (Dong et al., EMNLP 2021): hierarchical relational knowledge distillation across domains."""
