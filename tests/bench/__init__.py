"""The performance benchmark (issue 7): ``python -m tests.bench``; see run.py."""
