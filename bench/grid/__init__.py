"""Running a grid: what to run, its jobs and worker processes, the runner that trains and records
each run, failures, and the step profiler."""
