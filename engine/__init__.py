"""botengine: many trading bots on shared Celery workers, one self-rescheduling tick chain each."""

__version__ = "0.1.0"
