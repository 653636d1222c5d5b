"""The benchmarks (`python manage.py benchmark`): figures measured against the fake exchange, beside baselines."""
