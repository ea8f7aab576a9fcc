"""Side-by-side benchmarks of the Fairway pipeline (``python -m benchmarks.run``).

Every benchmark runs its contenders in one process run, on a fresh RabbitMQ vhost
and a fresh database, and reports ratios against a baseline measured in that same
run: the machine is shared and noisy, so absolute numbers only describe that run.
"""
