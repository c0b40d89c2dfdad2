"""Training: the one loop for teachers and students (optimiser, schedule, dev selection,
checkpoints), a student's step and stages, predictions, several processes failing together,
memory and training curves."""
