"""Training and evaluation data: BIG-bench JSON tasks as `datasets.Dataset`s, and splits."""

from ulpt.data.bigbench import answer_text, list_tasks, load_task, prefetch_tasks, split_rows

__all__ = ["answer_text", "list_tasks", "load_task", "prefetch_tasks", "split_rows"]
