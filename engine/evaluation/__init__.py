"""`codefill eval`: pass@1 and exact match on HumanEval-Infilling and SAFIM (Python).

- datasets.py   the task sets, their files, and the budget each kind gets (never from the reference)
- execution.py  runs generated programs in a child process: isolated Python, time and memory limits, temp dir
- metrics.py    exact match, SAFIM's stdout comparison and API-call match, per-set summaries
- harness.py    the command: fills through the engine, checks in a pool of workers, the table and JSON files
"""

from engine.evaluation.harness import main

__all__ = ["main"]
