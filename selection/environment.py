"""Environment variables set for the length of a block: what child processes and libraries that read their
settings from the environment (MLflow's HTTP client, Optuna workers) see."""

import os
from contextlib import contextmanager


@contextmanager
def temporary_environment(**variables: str):
    """Set `variables` inside the block; afterwards each has its earlier value again, or none."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
