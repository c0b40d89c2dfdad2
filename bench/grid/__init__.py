"""Running a grid: what to run, its jobs, locks and worker processes, the runner that trains and
records each run, failures, the machine a run records, and the step profiler."""
