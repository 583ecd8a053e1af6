"""The training harness: configs, loops, steps, checkpoints, devices, plots, benchmarks."""
