"""`codefill eval`: the evaluation harness (the code lives in engine/evaluation/)."""

from engine.evaluation.harness import check_task, finish_fill, humaneval_program, main

__all__ = ["check_task", "finish_fill", "humaneval_program", "main"]
