"""Quality: the Great Expectations round gate (``gate``) and annotation metrics against ground truth."""
