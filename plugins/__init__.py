"""The built-in plugins of kd-bench, installed as `bench_plugins`."""
