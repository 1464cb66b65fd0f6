"""`rlgen.recipes`: end-to-end tasks, each a readable, runnable module."""
