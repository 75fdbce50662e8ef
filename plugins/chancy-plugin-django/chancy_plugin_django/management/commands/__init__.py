"""``manage.py chancy_migrate`` and ``manage.py chancy_worker``."""
