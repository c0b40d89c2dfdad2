"""Models: references and loading (random:, pkg:, hf:, path:), the classifier every teacher and
student is, models shipped in PyPI packages, vocabulary mapping between teacher and student, and
the teacher's precision."""
