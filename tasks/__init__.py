"""Built-in tasks, installed as ``tdabench.tasks``. One module per task; each exposes ``TASK``."""
