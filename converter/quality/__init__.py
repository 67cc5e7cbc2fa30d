"""Measuring what quantization did: the evaluation suites, task files and texts, the statistics behind the gates,
the reference cache and the reports (`qconv eval`)."""
